"""Long documents in domain retrieval: truncation vs max-over-windows (MaxP), and BM25. Prints
one JSON line.

    python benchmarks/domain_long_docs.py
    python benchmarks/domain_long_docs.py --data-root /work/shared/data --overlap 32

Data: PubMedQA PQA-L (`domain/biomedical/pubmedqa_pqal/ori_pqal.json`, 1,000 PubMed articles).
Its `test_ground_truth.json` names the 500 test PMIDs; the other 500 are the dev side used here
(the test side is not scored). Two retrieval tasks, queries = the 500 dev QUESTIONs, corpus = all
1,000 articles, one relevant document per query (its own article):
- question -> abstract: doc = CONTEXTS joined with " " (the abstract without its conclusion);
- question -> conclusion: doc = LONG_ANSWER.

Measured with the default encoder (all-MiniLM-L6-v2, max_seq_length 256 incl. [CLS]/[SEP]):
- document length in wordpieces (no special tokens): mean, p50, p90, max, and the share of
  documents the encoder truncates (wordpieces + 2 > max_seq_length);
- ndcg@10 (and mrr@10, recall@1/10) of `truncate` vs `max_chunk` (windows of max_seq_length - 2
  wordpieces overlapping by `--overlap`, doc score = best window's cosine), the paired bootstrap
  of max_chunk - truncate on ndcg@10 (1,000 resamples, 95% interval), and BM25 (bm25s, English
  stopwords, no stemmer);
- wall time of each run. On a shared 2-core machine wall time includes waiting for the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

PQAL = Path("domain/biomedical/pubmedqa_pqal")


def load_tasks(data_root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """-> (queries, {target: docs}, qrels) on the dev PMIDs (all not in test_ground_truth.json)."""
    folder = data_root / PQAL
    with open(folder / "ori_pqal.json", encoding="utf-8") as f:
        articles = json.load(f)
    with open(folder / "test_ground_truth.json", encoding="utf-8") as f:
        test = set(json.load(f))
    dev = [pmid for pmid in articles if pmid not in test]
    if len(articles) != 1000 or len(dev) != 500:
        raise ValueError(f"{folder}: expected 1,000 articles and 500 non-test PMIDs, got {len(articles)} and {len(dev)}")
    queries = pd.DataFrame({"id": dev, "text": [articles[p]["QUESTION"] for p in dev]})
    ids = list(articles)
    docs = {
        "abstract": pd.DataFrame({"id": ids, "title": "", "text": [" ".join(articles[p]["CONTEXTS"]) for p in ids]}),
        "conclusion": pd.DataFrame({"id": ids, "title": "", "text": [articles[p]["LONG_ANSWER"] for p in ids]}),
    }
    qrels = pd.DataFrame({"query_id": dev, "doc_id": dev, "relevance": 1})
    return queries, docs, qrels


def length_stats(tokenizer, texts: list[str], max_seq_length: int) -> dict:
    n = np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]])
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    return {
        "mean": round(float(n.mean()), 1),
        "p50": float(np.percentile(n, 50)),
        "p90": float(np.percentile(n, 90)),
        "max": int(n.max()),
        "share_truncated": round(float(np.mean(n + specials > max_seq_length)), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=Path(os.environ.get("SIMCSE_DATA_ROOT", "/work/shared/data")))
    ap.add_argument("--model", default="default")
    ap.add_argument("--overlap", type=int, default=32, help="wordpieces shared by consecutive windows")
    ap.add_argument("--n-resamples", type=int, default=1000)
    args = ap.parse_args()

    from simcse_ops.domain import make_chunker, score_bm25, score_retrieval
    from simcse_ops.encoder import encode, load_sentence_transformer
    from simcse_ops.stats import paired_bootstrap

    t_start = time.perf_counter()
    queries, docs, qrels = load_tasks(args.data_root)
    model = load_sentence_transformer(args.model, device="cpu")
    max_len = int(model.max_seq_length)
    tokenizer = model.tokenizer
    chunker = make_chunker(tokenizer, max_len, overlap=args.overlap)

    def embed(sentences: list[str]) -> np.ndarray:
        return encode(model, sentences)

    def brief(r) -> dict:
        keep = ("ndcg@10", "mrr@10", "recall@1", "recall@10")
        return {**{k: r.metrics[k] for k in keep}, "wall_s": r.timing["total_s"]}

    from simcse_ops.hardware import machine_report

    out: dict = {
        "benchmark": "domain_long_docs",
        "data": "PubMedQA PQA-L dev side: 500 non-test questions vs all 1,000 articles",
        "model": args.model,
        "max_seq_length": max_len,
        "overlap": args.overlap,
        "machine": machine_report(),
        "python": platform.python_version(),
        "query_wordpieces": length_stats(tokenizer, queries["text"].tolist(), max_len),
    }
    for target, corpus in docs.items():
        res: dict = {"doc_wordpieces": length_stats(tokenizer, corpus["text"].tolist(), max_len)}
        trunc = score_retrieval(embed, queries, corpus, qrels, long_documents="truncate")
        chunk = score_retrieval(embed, queries, corpus, qrels, long_documents="max_chunk", chunker=chunker)
        bm25 = score_bm25(queries, corpus, qrels)
        res["truncate"] = brief(trunc)
        res["max_chunk"] = {
            **brief(chunk),
            "n_windows": chunk.details["n_windows"],
            "n_docs_split": chunk.details["n_docs_split"],
        }
        res["bm25"] = brief(bm25)
        pb = paired_bootstrap(chunk.items, trunc.items, "ndcg@10", n_resamples=args.n_resamples, seed=0)
        res["max_chunk_minus_truncate_ndcg@10"] = {
            "diff": round(pb.diff, 4),
            "ci95": [round(pb.ci_low, 4), round(pb.ci_high, 4)],
            "p_at_most_0": pb.p_at_most(0.0),
            "queries_changed": int(np.sum(np.array(chunk.items["ndcg@10"]) != np.array(trunc.items["ndcg@10"]))),
        }
        pbm = paired_bootstrap(chunk.items, bm25.items, "ndcg@10", n_resamples=args.n_resamples, seed=0)
        res["max_chunk_minus_bm25_ndcg@10"] = {
            "diff": round(pbm.diff, 4),
            "ci95": [round(pbm.ci_low, 4), round(pbm.ci_high, 4)],
        }
        out[target] = res
    out["total_wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
