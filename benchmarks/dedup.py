"""Near-duplicate detection benchmark: `simcse_ops.dedup` (vectorised MinHash LSH) against
`datasketch` (MinHash + MinHashLSH) with the same parameters (params.yaml `dedup`). Prints one
JSON line.

    python benchmarks/dedup.py                          # 1M sentences; both on a 50k set
    python benchmarks/dedup.py --size 20000 --compare-size 5000   # a quick check

Data: the sentences of the ingested real corpora (wiki1m, enwiki, pubmedqa), exact- and
near-deduplicated, are the base pool. To reach `--size` items the pool is resampled: a synthetic
item joins 4 random word windows (3-8 words) of 4 random pool sentences, so two items rarely
share more than a few word pairs. Then `--planted` of the items are near duplicates planted on
purpose: a copy of an earlier item with 1-3 random edits (replace, delete, insert a word, swap
two words, change case or punctuation), kept only when its exact shingle Jaccard with the
original is >= the threshold (the definition of a near duplicate). The copy goes after its
original, so the right answer is "remove exactly the planted copies".

Both pipelines start from raw text (normalise, shingle, MinHash, LSH), verify candidate pairs
by the exact Jaccard of the shingle sets and remove greedily in order: an item near an earlier
kept item is removed. precision = |removed & planted| / |removed|, recall = |removed & planted| /
|planted|. datasketch (~thousands of sentences/s) runs on the `--compare-size` data set, ours on
that same set and on the full `--size` set. Both wall and CPU (process) time are reported for
the whole pipeline: on a shared machine wall time includes waiting for the CPU, so compare the
two libraries within one run, preferably by CPU time (both run single-threaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from simcse_ops.config import DedupConfig, load_params
from simcse_ops.dedup import (
    NearPairs,
    ShingleSets,
    greedy_near_duplicates,
    jaccard,
    near_duplicate_pairs,
    normalize,
    normalize_many,
    shingles,
    tokens,
)

POOL_SOURCES = ("wiki1m", "enwiki", "pubmedqa")


def load_pool(data_dir: Path, cfg: DedupConfig) -> list[str]:
    """Real corpus sentences, without exact or near duplicates among themselves.

    Near duplicates are removed with our LSH at a lower threshold (threshold - 0.2, both members
    of a pair dropped), so that the pool itself holds practically no pair at >= threshold.
    """
    texts: list[str] = []
    for name in POOL_SOURCES:
        path = data_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `python -m stages.ingest` first")
        texts.extend(t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t)
    norm = normalize_many(texts)
    seen: set[str] = set()
    uniq = []
    for t, n in zip(texts, norm):
        if n and n not in seen and len(tokens(n)) >= 4:
            seen.add(n)
            uniq.append(t)
    loose = DedupConfig(**{**cfg.__dict__, "threshold": max(cfg.threshold - 0.2, 0.3),
                           "prefilter_margin": 0.2})
    sets = ShingleSets.from_normalized(normalize_many(uniq), loose.ngram)
    pairs = near_duplicate_pairs(sets, loose)
    drop = np.zeros(len(uniq), dtype=bool)
    drop[pairs.i] = True
    drop[pairs.j] = True
    return [t for t, d in zip(uniq, drop) if not d]


def _perturb(words: list[str], rng: np.random.Generator, vocab: list[str]) -> list[str]:
    w = list(words)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 5))
        p = int(rng.integers(0, len(w)))
        if op == 0:
            w[p] = vocab[int(rng.integers(0, len(vocab)))]
        elif op == 1 and len(w) > 4:
            del w[p]
        elif op == 2:
            w.insert(p, vocab[int(rng.integers(0, len(vocab)))])
        elif op == 3 and p + 1 < len(w):
            w[p], w[p + 1] = w[p + 1], w[p]
        else:
            w[p] = w[p].upper() if rng.random() < 0.5 else w[p] + ","
    return w


def build(pool: list[str], size: int, planted: int, cfg: DedupConfig, seed: int):
    """(texts, is_planted) with `planted` near-duplicate copies among `size` items."""
    rng = np.random.default_rng(seed)
    pool_words = [t.split() for t in pool]
    vocab = sorted({w for ws in pool_words[:20000] for w in ws})
    n_base = size - planted
    base: list[str] = []
    order = rng.permutation(len(pool))[: min(len(pool), n_base // 4)]
    base.extend(pool[i] for i in order)  # some real sentences as they are
    while len(base) < n_base:
        m = n_base - len(base)
        src = rng.integers(0, len(pool), size=(m, 4))
        lens = rng.integers(3, 9, size=(m, 4))
        starts = rng.random((m, 4))
        for r in range(m):
            parts = []
            for c in range(4):
                ws = pool_words[src[r, c]]
                ln = min(int(lens[r, c]), len(ws))
                s0 = int(starts[r, c] * (len(ws) - ln + 1))
                parts.extend(ws[s0 : s0 + ln])
            base.append(" ".join(parts))
    base = [base[i] for i in rng.permutation(len(base))]
    # Planted copies: each goes somewhere after its original.
    copies: list[tuple[int, str]] = []
    originals = rng.choice(n_base, size=planted, replace=False)
    for o in originals:
        o = int(o)
        a = shingles(normalize(base[o]), cfg.ngram)
        for _attempt in range(20):
            c = " ".join(_perturb(base[o].split(), rng, vocab))
            if jaccard(a, shingles(normalize(c), cfg.ngram)) >= cfg.threshold:
                break
        else:
            c = base[o].upper()  # J = 1 after normalisation
        copies.append((o, c))
    # Insert copy k right after a random position >= its original.
    slots = [int(rng.integers(o, n_base)) for o, _ in copies]
    by_slot: dict[int, list[str]] = {}
    for s, (_, c) in zip(slots, copies):
        by_slot.setdefault(s, []).append(c)
    texts: list[str] = []
    is_planted: list[bool] = []
    for i, t in enumerate(base):
        texts.append(t)
        is_planted.append(False)
        for c in by_slot.get(i, ()):
            texts.append(c)
            is_planted.append(True)
    return texts, np.array(is_planted)


def score(removed: np.ndarray, truth: np.ndarray) -> dict:
    tp = int((removed & truth).sum())
    return {
        "removed": int(removed.sum()),
        "planted": int(truth.sum()),
        "true_positives": tp,
        "precision": round(tp / max(int(removed.sum()), 1), 4),
        "recall": round(tp / max(int(truth.sum()), 1), 4),
    }


def run_ours(texts: list[str], cfg: DedupConfig) -> tuple[np.ndarray, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    sets = ShingleSets.from_normalized(normalize_many(texts), cfg.ngram)
    pairs = near_duplicate_pairs(sets, cfg)
    removed, _, _ = greedy_near_duplicates(len(texts), pairs)
    return removed, time.perf_counter() - t0, time.process_time() - c0


def run_datasketch(texts: list[str], cfg: DedupConfig) -> tuple[np.ndarray, float, float]:
    from datasketch import MinHash, MinHashLSH

    t0, c0 = time.perf_counter(), time.process_time()
    shingle_sets = []
    for t in texts:
        shingle_sets.append({" ".join(s).encode("utf-8") for s in shingles(normalize(t), cfg.ngram)})
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    pi, pj = [], []
    for k, m in enumerate(MinHash.generator(shingle_sets, num_perm=cfg.num_perm, seed=cfg.seed)):
        if not shingle_sets[k]:
            continue
        for c in lsh.query(m):
            pi.append(c)
            pj.append(k)
        lsh.insert(k, m)
    # Verification by exact Jaccard of the same shingle sets, then the same greedy removal.
    keep_i, keep_j, jac = [], [], []
    for a, b in zip(pi, pj):
        s = len(shingle_sets[a] & shingle_sets[b]) / len(shingle_sets[a] | shingle_sets[b])
        if s >= cfg.threshold:
            keep_i.append(a)
            keep_j.append(b)
            jac.append(s)
    pairs = NearPairs(np.array(keep_i, dtype=np.int64), np.array(keep_j, dtype=np.int64), np.array(jac))
    removed, _, _ = greedy_near_duplicates(len(texts), pairs)
    return removed, time.perf_counter() - t0, time.process_time() - c0


def _timing(n: int, wall: float, cpu: float) -> dict:
    return {"seconds": round(wall, 2), "sentences_per_s": round(n / wall),
            "cpu_seconds": round(cpu, 2), "sentences_per_cpu_s": round(n / cpu)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/ingested"))
    ap.add_argument("--size", type=int, default=1_000_000, help="items in the full data set (ours only)")
    ap.add_argument("--compare-size", type=int, default=50_000, help="items both libraries run on")
    ap.add_argument("--planted-fraction", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-datasketch", action="store_true")
    args = ap.parse_args(argv)

    cfg = load_params(args.params).dedup
    t0 = time.perf_counter()
    pool = load_pool(args.data, cfg)
    small, small_truth = build(pool, args.compare_size, int(args.compare_size * args.planted_fraction), cfg, args.seed)
    full, full_truth = build(pool, args.size, int(args.size * args.planted_fraction), cfg, args.seed + 1)
    prep_s = time.perf_counter() - t0

    from simcse_ops.hardware import machine_report

    out: dict = {
        "benchmark": "dedup_near_duplicates",
        "params": {"ngram": cfg.ngram, "threshold": cfg.threshold, "num_perm": cfg.num_perm,
                   "bands": cfg.bands, "rows": cfg.rows},
        "data": {"pool_sentences": len(pool), "pool_sources": list(POOL_SOURCES),
                 "full_size": len(full), "full_planted": int(full_truth.sum()),
                 "compare_size": len(small), "compare_planted": int(small_truth.sum()),
                 "build_s": round(prep_s, 1)},
        "pipelines": {
            "ours": "simcse_ops.dedup: normalize_many -> ShingleSets (pyarrow + numpy) -> numpy "
                    "MinHash -> LSH buckets -> estimate prefilter -> exact Jaccard -> greedy",
            "datasketch": "normalize + shingles (Python) -> MinHash.generator (bulk) -> "
                          "MinHashLSH.query/insert -> exact Jaccard on the shingle sets -> greedy",
        },
        "machine": {**machine_report(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
    }
    removed, wall, cpu = run_ours(small, cfg)
    out["ours_compare"] = {"measured_on": f"compare set ({len(small)} items)",
                           **_timing(len(small), wall, cpu), **score(removed, small_truth)}
    if not args.skip_datasketch:
        import datasketch

        removed, wall, cpu = run_datasketch(small, cfg)
        out["datasketch_compare"] = {
            "measured_on": f"compare set ({len(small)} items)", "version": datasketch.__version__,
            **_timing(len(small), wall, cpu), **score(removed, small_truth)}
    removed, wall, cpu = run_ours(full, cfg)
    out["ours_full"] = {"measured_on": f"full set ({len(full)} items)",
                        **_timing(len(full), wall, cpu), **score(removed, full_truth)}
    if "datasketch_compare" in out:
        ds = out["datasketch_compare"]
        out["speedup"] = {
            "same_set_wall": round(out["ours_compare"]["sentences_per_s"] / ds["sentences_per_s"], 1),
            "same_set_cpu": round(out["ours_compare"]["sentences_per_cpu_s"] / ds["sentences_per_cpu_s"], 1),
            "full_vs_compare_wall": round(out["ours_full"]["sentences_per_s"] / ds["sentences_per_s"], 1),
            "full_vs_compare_cpu": round(out["ours_full"]["sentences_per_cpu_s"] / ds["sentences_per_cpu_s"], 1),
        }
    out["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
