"""Semantic textual similarity evaluation, as SimCSE reports it.

For a pair (u, v) of sentence embeddings the prediction is the cosine
    cos(u, v) = u . v / (|u| |v|),
and a task's score is Spearman's rank correlation rho between predictions and gold scores,
reported x100 with two decimals.

The seven SimCSE tasks (Gao et al. 2021, Table 1; their modified SentEval):
- STS12-16 in SentEval's "all" setting: the subsets of one year are concatenated and ONE Spearman
  is computed over all their pairs (not the mean of per-subset correlations). The per-subset
  figures, their plain mean and the size-weighted mean sum_k n_k rho_k / sum_k n_k are reported as
  details for reference.
- STS-B test and SICK-R test: Spearman over the test split.
- avg: the mean of the seven figures, each first rounded to two decimals (as SimCSE prints them).

Each distinct sentence is embedded once, whichever tasks and sides it appears in.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from simcse_ops.errors import DataError, MissingInputError

EmbedFn = Callable[[list[str]], np.ndarray]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, D) x (N, D) -> (N,). A zero vector has cosine 0 with anything."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = na * nb
    dots = np.einsum("nd,nd->n", a, b)
    return np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)


def spearman100(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Spearman's rho x100 (ties get average ranks). Undefined (constant input) -> NaN."""
    pred = np.asarray(pred, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if len(pred) != len(gold):
        raise ValueError(f"spearman: {len(pred)} predictions but {len(gold)} gold scores")
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return float("nan")
    return float(stats.spearmanr(pred, gold).statistic * 100.0)


def pearson100(pred: Sequence[float], gold: Sequence[float]) -> float:
    pred = np.asarray(pred, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return float("nan")
    return float(stats.pearsonr(pred, gold).statistic * 100.0)


def embed_unique(embed: EmbedFn, sentences: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """Embed each distinct sentence once -> (index of each sentence, (U, D) embeddings)."""
    index: dict[str, int] = {}
    for s in sentences:
        if s not in index:
            index[s] = len(index)
    emb = embed(list(index)) if index else np.zeros((0, 0), dtype=np.float32)
    if len(emb) != len(index):
        raise RuntimeError(f"encoder returned {len(emb)} embeddings for {len(index)} sentences")
    return index, emb


def pair_cosines(
    index: dict[str, int], emb: np.ndarray, s1: Sequence[str], s2: Sequence[str]
) -> np.ndarray:
    i1 = np.fromiter((index[s] for s in s1), dtype=np.int64, count=len(s1))
    i2 = np.fromiter((index[s] for s in s2), dtype=np.int64, count=len(s2))
    return cosine_rows(emb[i1], emb[i2])


def sts_spearman(embed: EmbedFn, s1: Sequence[str], s2: Sequence[str], gold: Sequence[float]) -> float:
    """Spearman x100 of cosine similarities for one set of pairs (e.g. STS-B dev during training)."""
    index, emb = embed_unique(embed, list(s1) + list(s2))
    return spearman100(pair_cosines(index, emb, s1, s2), gold)


@dataclass(frozen=True)
class DevScorer:
    """A model-selection score on a dev set: `score(embed)` -> a number, higher is better.

    `metric` names it in the dev curve and train.json (e.g. "stsb_dev_spearman",
    "select_pubmedqa_conclusion_dev"). The trainer calls `score` every `eval_steps` and exports
    the step with the highest score.

    A scorer over several dev tasks (`evaluation.dev_scorer_for`, a domain variant) puts each
    task's figure of the last call in `parts` (the dev curve's extra columns) and compares them
    with `reference`, the start model's figures, which the trainer fills from its step-0
    evaluation (and from the curve's step-0 row when it resumes).
    """

    metric: str
    score: Callable[[EmbedFn], float]
    parts: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # sha256 of the dev data and the selection rule: part of the run's fingerprint


def sts_dev_scorer(path: Path | str, split: str | None) -> DevScorer:
    """STS pairs (ingest's STS schema) of one split, scored as Spearman x100 of the cosines.

    `split=None` keeps every row. The metric is named `<file stem>_<split>_spearman`: STS-B dev
    (params.yaml `evaluate.dev_task`, the default model-selection scorer) is "stsb_dev_spearman".
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: the dev set is missing; run the ingest stage first or pass --eval-data")
    t = pq.read_table(path, columns=["split", "sentence1", "sentence2", "score"]).to_pydict()
    keep = [i for i, s in enumerate(t["split"]) if split is None or s == split]
    if not keep:
        raise DataError(path, None, f"no rows with split {split!r}", "the dev split (evaluate.dev_task)")
    s1 = [t["sentence1"][i] for i in keep]
    s2 = [t["sentence2"][i] for i in keep]
    gold = [t["score"][i] for i in keep]
    metric = f"{path.stem}_{split}_spearman" if split is not None else f"{path.stem}_spearman"
    fp = hashlib.sha256(json.dumps([metric, s1, s2, gold]).encode()).hexdigest()[:16]
    return DevScorer(metric, lambda embed: sts_spearman(embed, s1, s2, gold), fingerprint=fp)


@dataclass(frozen=True)
class TaskResult:
    name: str
    spearman: float  # the task's figure: over all pairs ("all" setting)
    pearson: float
    n: int
    subsets: dict[str, dict[str, float]]  # subset -> {spearman, pearson, n}
    mean: float  # plain mean of subset Spearman
    wmean: float  # size-weighted mean of subset Spearman


def score_task(name: str, pairs: pd.DataFrame, pred: np.ndarray) -> TaskResult:
    """Score one task from its pairs (columns subset, score) and the predicted cosines."""
    gold = pairs["score"].to_numpy(dtype=np.float64)
    subsets: dict[str, dict[str, float]] = {}
    for subset, idx in pairs.groupby("subset", sort=False).indices.items():
        subsets[str(subset)] = {
            "spearman": round(spearman100(pred[idx], gold[idx]), 4),
            "pearson": round(pearson100(pred[idx], gold[idx]), 4),
            "n": int(len(idx)),
        }
    rhos = np.array([v["spearman"] for v in subsets.values()])
    ns = np.array([v["n"] for v in subsets.values()], dtype=np.float64)
    return TaskResult(
        name=name,
        spearman=spearman100(pred, gold),
        pearson=pearson100(pred, gold),
        n=int(len(pairs)),
        subsets=subsets,
        mean=float(rhos.mean()) if len(rhos) else float("nan"),
        wmean=float((rhos * ns).sum() / ns.sum()) if len(rhos) else float("nan"),
    )


def evaluate_sts(embed: EmbedFn, tasks: dict[str, pd.DataFrame]) -> dict:
    """Score every task; returns the DVC metrics mapping.

    `tasks` maps a task name to its pairs (columns subset, sentence1, sentence2, score). The
    result's top-level numbers are the task figures (Spearman x100, two decimals) and `avg`;
    `details` holds pearson, n, per-subset figures, mean and wmean; `timing` the wall times.
    """
    t0 = time.perf_counter()
    all_sentences: list[str] = []
    for df in tasks.values():
        all_sentences.extend(df["sentence1"].tolist())
        all_sentences.extend(df["sentence2"].tolist())
    index, emb = embed_unique(embed, all_sentences)
    t_encode = time.perf_counter() - t0

    out: dict = {}
    details: dict = {}
    for name, df in tasks.items():
        pred = pair_cosines(index, emb, df["sentence1"].tolist(), df["sentence2"].tolist())
        r = score_task(name, df.reset_index(drop=True), pred)
        out[name] = round(r.spearman, 2)
        details[name] = {
            "spearman": round(r.spearman, 4),
            "pearson": round(r.pearson, 4),
            "n": r.n,
            "subset_mean": round(r.mean, 4),
            "subset_wmean": round(r.wmean, 4),
            "subsets": r.subsets,
        }
    out["avg"] = round(float(np.mean([out[k] for k in tasks])), 2) if tasks else float("nan")
    out["details"] = details
    out["n_sentences_encoded"] = len(index)
    out["timing"] = {
        "encode_s": round(t_encode, 2),
        "total_s": round(time.perf_counter() - t0, 2),
    }
    return out


# --------------------------------------------------------------------------------------------
# User pairs files (the `simcse-ops sts` command)

PAIR_FIELDS = ("sentence1", "sentence2", "score")


def _pair_row(path: Path, line: int, rec: dict) -> tuple[str, str, float]:
    missing = [f for f in PAIR_FIELDS if f not in rec or rec[f] is None]
    if missing:
        raise DataError(path, line, f"no value for {', '.join(missing)}", "fields sentence1, sentence2, score")
    s1, s2, raw = rec["sentence1"], rec["sentence2"], rec["score"]
    if not isinstance(s1, str) or not isinstance(s2, str) or not s1.strip() or not s2.strip():
        raise DataError(path, line, f"sentence1={s1!r}, sentence2={s2!r}", "two non-empty sentences")
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise DataError(path, line, f"score {raw!r}", "a number") from None
    if not np.isfinite(score):
        raise DataError(path, line, f"score {raw!r}", "a finite number")
    return s1, s2, score


def read_pairs_file(path: Path | str) -> pd.DataFrame:
    """Read a user's pairs file: .tsv (header sentence1<TAB>sentence2<TAB>score), .csv or .jsonl.

    Returns columns subset ("all"), sentence1, sentence2, score. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such pairs file")
    suffix = path.suffix.lower()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(path, line, "bytes that are not UTF-8", "UTF-8 text") from None
    rows: list[tuple[str, str, float]] = []
    if suffix == ".jsonl":
        for i, raw_line in enumerate(text.splitlines(), start=1):
            if not raw_line.strip():
                continue
            try:
                rec = json.loads(raw_line)
            except json.JSONDecodeError as e:
                raise DataError(path, i, f"invalid JSON ({e.msg})", "one JSON object per line") from None
            if not isinstance(rec, dict):
                raise DataError(path, i, type(rec).__name__, "a JSON object")
            rows.append(_pair_row(path, i, rec))
    elif suffix in (".tsv", ".csv", ".txt"):
        delim = "," if suffix == ".csv" else "\t"
        quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
        reader = csv.reader(text.splitlines(), delimiter=delim, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise DataError(path, 1, "an empty file", "a header line sentence1, sentence2, score")
        header = [h.strip() for h in header]
        if not set(PAIR_FIELDS) <= set(header):
            raise DataError(
                path, 1, f"header {header}", f"a header with {', '.join(PAIR_FIELDS)} separated by {delim!r}"
            )
        for rec in reader:
            i = reader.line_num
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                raise DataError(path, i, f"{len(rec)} fields", f"{len(header)} fields like the header")
            rows.append(_pair_row(path, i, dict(zip(header, rec, strict=True))))
    else:
        raise ValueError(f"{path}: unknown pairs format {suffix!r}; use .tsv, .csv or .jsonl")
    if not rows:
        raise DataError(path, None, "no pairs", "at least two scored pairs")
    df = pd.DataFrame(rows, columns=list(PAIR_FIELDS))
    df.insert(0, "subset", "all")
    return df
