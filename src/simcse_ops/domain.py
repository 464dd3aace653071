"""Scoring a sentence encoder on domain tasks: pair classification and retrieval.

Pair classification (as MTEB's PairClassification): for each pair (s1, s2) with a 0/1 label the
prediction is cos(e(s1), e(s2)); the task reports
- `ap`: average precision of the cosines, sum_k (R_k - R_{k-1}) P_k over the distinct cosine
  thresholds (sklearn average_precision_score), x100;
- `roc_auc`: area under the ROC curve = P(cos of a random positive > cos of a random negative),
  ties counting 1/2 (sklearn roc_auc_score), x100.

Graded similarity (an STS-style domain task, e.g. BIOSSES): for each pair with a human score g
the prediction is cos(e(s1), e(s2)); the task reports `spearman`, Spearman's rho of (g, cos), and
`pearson`, x100 (as the general STS tasks, `simcse_ops.sts`).

Retrieval (as BEIR / MTEB's Retrieval): each query is embedded, each document's text is
`title + " " + text` (the text alone when the title is empty), and documents are ranked by exact
cosine over the whole corpus. The run keeps the top 100 per query, ordered as trec_eval orders it
(score descending, ties by document id descending), and the metrics come from trec_eval's own
code (pytrec_eval), x100:
- `ndcg@10` (ndcg_cut.10): DCG@10 / IDCG@10 with DCG = sum_{i<=10} rel_i / log2(i + 1);
- `mrr@10` (recip_rank on the run cut to its top 10): 1 / rank of the first relevant document,
  0 when none is in the top 10;
- `recall@k` for k = 1, 10, 100 (recall.k): relevant documents in the top k / relevant documents.
A task's figure is the mean over queries; `items` keeps every query's values (0..1) so that
`simcse_ops.stats` can bootstrap them.

Long documents: the encoder truncates its input at its maximum length (all-MiniLM-L6-v2: 256
wordpieces), so by default (`long_documents="truncate"`) a document is represented by its first
window only. `long_documents="max_chunk"` splits each document into windows that fit (see
`make_chunker`), embeds every window and scores a document by its best window,
    s(q, d) = max_w cos(e(q), e(w)),
the MaxP aggregation of Dai & Callan (2019).

Lexical baseline: `score_bm25` ranks with BM25 (bm25s; k1 = 1.5, b = 0.75, Lucene's idf), on
bm25s's tokenizer (lower-cased `\\b\\w\\w+\\b` tokens, its English stopword list) and no stemmer
unless asked (PyStemmer is optional), through the same trec_eval code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from simcse_ops.stats import GRADED_METRICS, bootstrap_ci, correlation
from simcse_ops.sts import embed_unique, pair_cosines

EmbedFn = Callable[[list[str]], np.ndarray]
Chunker = Callable[[str], list[str]]

PAIR_METRICS = ("ap", "roc_auc")
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")
TOP_K = 100
LONG_DOCUMENTS = ("truncate", "max_chunk")

# our name -> trec_eval's result key; mrr@10 is computed on a second, top-10 run
_TREC_KEYS = {"ndcg@10": "ndcg_cut_10", "recall@1": "recall_1", "recall@10": "recall_10", "recall@100": "recall_100"}
_QUERY_BLOCK = 256  # queries scored at once: a (256, n_docs) float64 block


@dataclass(frozen=True)
class TaskResult:
    """One task's scores: `metrics` x100 (4 decimals); `items` per pair / per query, JSON-ready."""

    kind: str  # "pairs" | "sts" | "retrieval"
    metrics: dict[str, float]
    n: int  # pairs or queries
    items: dict[str, list]
    timing: dict[str, float]
    details: dict = field(default_factory=dict)


def with_intervals(
    result: TaskResult, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """JSON-ready mapping {kind, metrics, ci: {metric: [low, high]}, n, items, timing, details}.

    The intervals are percentile bootstrap intervals over items (over groups for grouped pairs),
    see `simcse_ops.stats.bootstrap_ci`.
    """
    ci = {
        name: [round(v, 4) for v in bootstrap_ci(result.items, name, n_resamples, confidence, seed)]
        for name in result.metrics
    }
    out = asdict(result)
    out["ci"] = ci
    out["bootstrap"] = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    return out


def _require(df: pd.DataFrame, what: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: no column {', '.join(missing)} (columns: {list(df.columns)})")


# --------------------------------------------------------------------------------------------
# Pair classification


def score_pairs(embed: EmbedFn, pairs: pd.DataFrame) -> TaskResult:
    """AP and ROC AUC x100 of pair cosines.

    `pairs` has columns sentence1, sentence2, label (0/1) and optionally id (default: the row
    number as a string) and group (pairs that share a group are bootstrapped together).
    """
    _require(pairs, "pairs", ("sentence1", "sentence2", "label"))
    t0 = time.perf_counter()
    labels = pairs["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"pairs: labels must be 0 or 1, found {sorted(set(labels.tolist()))}")
    labels = labels.astype(np.int64)
    if len(labels) == 0 or labels.min() == labels.max():
        raise ValueError(f"pairs: AP and ROC AUC need both labels; found {sorted(set(labels.tolist()))}")
    s1, s2 = pairs["sentence1"].astype(str).tolist(), pairs["sentence2"].astype(str).tolist()
    index, emb = embed_unique(embed, s1 + s2)
    t_encode = time.perf_counter() - t0
    cos = pair_cosines(index, emb, s1, s2)
    ids = pairs["id"].astype(str).tolist() if "id" in pairs.columns else [str(i) for i in range(len(pairs))]
    if len(set(ids)) != len(ids):
        raise ValueError("pairs: ids are not unique")
    groups = pairs["group"].astype(str).tolist() if "group" in pairs.columns else []
    metrics = {
        "ap": round(float(average_precision_score(labels, cos)) * 100.0, 4),
        "roc_auc": round(float(roc_auc_score(labels, cos)) * 100.0, 4),
    }
    items = {"id": ids, "label": labels.tolist(), "score": [float(x) for x in cos], "group": groups}
    return TaskResult(
        kind="pairs",
        metrics=metrics,
        n=len(ids),
        items=items,
        timing={"encode_s": round(t_encode, 3), "total_s": round(time.perf_counter() - t0, 3)},
        details={"n_sentences_encoded": len(index), "n_positive": int(labels.sum())},
    )


# --------------------------------------------------------------------------------------------
# Graded similarity


def score_graded_pairs(embed: EmbedFn, pairs: pd.DataFrame) -> TaskResult:
    """Spearman and Pearson x100 of pair cosines against the human scores.

    `pairs` has columns sentence1, sentence2, score and optionally id (default: the row number).
    """
    _require(pairs, "graded pairs", ("sentence1", "sentence2", "score"))
    t0 = time.perf_counter()
    gold = pairs["score"].to_numpy(dtype=np.float64)
    if len(gold) < 3 or np.all(gold == gold[0]):
        raise ValueError(f"graded pairs: a correlation needs at least 3 pairs with different scores, got {len(gold)}")
    s1, s2 = pairs["sentence1"].astype(str).tolist(), pairs["sentence2"].astype(str).tolist()
    index, emb = embed_unique(embed, s1 + s2)
    t_encode = time.perf_counter() - t0
    cos = np.asarray(pair_cosines(index, emb, s1, s2), dtype=np.float64)
    ids = pairs["id"].astype(str).tolist() if "id" in pairs.columns else [str(i) for i in range(len(pairs))]
    if len(set(ids)) != len(ids):
        raise ValueError("graded pairs: ids are not unique")
    metrics = {m: round(correlation(m, gold, cos), 4) for m in GRADED_METRICS}
    items = {"id": ids, "gold": gold.tolist(), "score": [float(x) for x in cos]}
    return TaskResult(kind="sts", metrics=metrics, n=len(ids), items=items,
                      timing={"encode_s": round(t_encode, 3), "total_s": round(time.perf_counter() - t0, 3)},
                      details={"n_sentences_encoded": len(index)})


# --------------------------------------------------------------------------------------------
# Retrieval: shared pieces


def doc_text(title: object, text: object) -> str:
    """A document as the encoder / BM25 sees it: title + " " + text, or the text alone."""
    title = "" if title is None or (isinstance(title, float) and np.isnan(title)) else str(title).strip()
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return f"{title} {text}" if title else text


def _doc_texts(docs: pd.DataFrame) -> list[str]:
    titles = docs["title"] if "title" in docs.columns else [""] * len(docs)
    return [doc_text(t, x) for t, x in zip(titles, docs["text"], strict=True)]


def qrels_dict(
    qrels: pd.DataFrame, query_ids: Sequence[str], doc_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """qrels rows -> {query_id: {doc_id: relevance}} as trec_eval wants it, after checking that
    every query has a relevant document (relevance > 0) and every judged id exists."""
    _require(qrels, "qrels", ("query_id", "doc_id", "relevance"))
    known_q, known_d = set(query_ids), set(doc_ids)
    out: dict[str, dict[str, int]] = {}
    for q, d, r in zip(qrels["query_id"].astype(str), qrels["doc_id"].astype(str), qrels["relevance"], strict=True):
        out.setdefault(q, {})[d] = int(r)
    unknown_q = sorted(set(out) - known_q)
    if unknown_q:
        raise ValueError(f"qrels: {len(unknown_q)} query ids are not among the queries: {unknown_q[:10]}")
    unknown_d = sorted({d for rel in out.values() for d in rel} - known_d)
    if unknown_d:
        raise ValueError(f"qrels: {len(unknown_d)} doc ids are not in the corpus: {unknown_d[:10]}")
    no_rel = [q for q in query_ids if not any(r > 0 for r in out.get(q, {}).values())]
    if no_rel:
        raise ValueError(
            f"retrieval: {len(no_rel)} queries have no relevant document in the qrels: {no_rel[:10]}"
            f"{' ...' if len(no_rel) > 10 else ''}; drop them or add their judgements"
        )
    return out


def _check_ids(df: pd.DataFrame, what: str) -> list[str]:
    ids = df["id"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = sorted({x for x in ids if x in seen or seen.add(x)})
        raise ValueError(f"{what}: repeated ids {dup[:10]}")
    return ids


def top_k_run(
    scores: Callable[[slice], np.ndarray], n_queries: int, query_ids: Sequence[str], doc_ids: Sequence[str], k: int
) -> dict[str, dict[str, float]]:
    """The top-k documents per query as {query_id: {doc_id: score}}.

    `scores(block)` returns the (B, n_docs) scores of a slice of queries. Documents are ordered
    as trec_eval orders them (score descending, ties by doc id descending), so the top k here is
    the top k trec_eval would read.
    """
    ids = np.asarray(doc_ids, dtype=object)
    # tie key: position in descending-id order (ascending key = larger id first)
    tie = np.empty(len(ids), dtype=np.int64)
    tie[np.argsort(ids)[::-1]] = np.arange(len(ids))
    k = min(k, len(ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, n_queries, _QUERY_BLOCK):
        block = slice(start, min(start + _QUERY_BLOCK, n_queries))
        s = np.asarray(scores(block), dtype=np.float64)  # (B, n_docs)
        order = np.lexsort((np.broadcast_to(tie, s.shape), -s), axis=-1)[:, :k]  # (B, k)
        for row, qi in enumerate(range(block.start, block.stop)):
            run[query_ids[qi]] = {ids[j]: float(s[row, j]) for j in order[row]}
    return run


def trec_items(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], query_ids: Sequence[str]) -> dict[str, list]:
    """Per-query ndcg@10, mrr@10, recall@1/10/100 (0..1) from trec_eval (pytrec_eval).

    `run` lists each query's documents in rank order, as `top_k_run` builds it; mrr@10 is
    trec_eval's recip_rank on the first 10.
    """
    import pytrec_eval

    per_q = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.1,10,100"}).evaluate(run)
    top10 = {q: dict(list(docs.items())[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    missing = [q for q in query_ids if q not in per_q or q not in rr]
    if missing:  # trec_eval silently drops queries with an empty run
        raise RuntimeError(f"trec_eval returned no values for queries {missing[:10]}")
    items: dict[str, list] = {"id": list(query_ids)}
    for name in RETRIEVAL_METRICS:
        if name == "mrr@10":
            items[name] = [float(rr[q]["recip_rank"]) for q in query_ids]
        else:
            items[name] = [float(per_q[q][_TREC_KEYS[name]]) for q in query_ids]
    return items


def _retrieval_result(items: dict[str, list], timing: dict[str, float], details: dict) -> TaskResult:
    metrics = {name: round(float(np.mean(items[name])) * 100.0, 4) for name in RETRIEVAL_METRICS}
    return TaskResult(
        kind="retrieval", metrics=metrics, n=len(items["id"]), items=items, timing=timing, details=details
    )


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


# --------------------------------------------------------------------------------------------
# Dense retrieval


def make_chunker(tokenizer, max_tokens: int, overlap: int = 32) -> Chunker:
    """Split a text into windows that the encoder reads whole.

    Each window holds at most `max_tokens - s` wordpieces, s being the special tokens the
    tokenizer adds ([CLS] and [SEP]: 2), and starts `overlap` wordpieces or fewer before the
    previous one ends. Windows are cut from the text at the tokenizer's character offsets, at
    word boundaries (a word longer than a window is cut inside), so every wordpiece of the text
    is in some window and re-tokenising a window gives back its wordpieces. A text that fits is
    returned whole. `tokenizer` is a Hugging Face fast tokenizer (offsets are needed).
    """
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    if budget < 1:
        raise ValueError(f"make_chunker: max_tokens={max_tokens} leaves no room for text")
    if not 0 <= overlap < budget:
        raise ValueError(f"make_chunker: overlap must be in [0, {budget}), got {overlap}")

    def chunk(text: str) -> list[str]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
        offsets = enc["offset_mapping"]
        n = len(offsets)
        if n <= budget:
            return [text]
        words = enc.word_ids()
        # a window may start or end only where a word starts (else inside a too-long word)
        starts_word = [i == 0 or words[i] != words[i - 1] for i in range(n)] + [True]
        windows: list[str] = []
        start = 0
        while True:
            end = min(start + budget, n)
            if end < n:
                cut = end
                while cut > start and not starts_word[cut]:
                    cut -= 1
                end = cut if cut > start else end
            windows.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end >= n:
                return windows
            nxt = max(end - overlap, start + 1)
            back = nxt
            while back > start + 1 and not starts_word[back]:
                back -= 1
            start = back if starts_word[back] else nxt

    return chunk


def _retrieval_inputs(queries: pd.DataFrame, docs: pd.DataFrame, qrels: pd.DataFrame):
    """Checked (query ids, doc ids, relevance judgments) of a retrieval task, for any scorer."""
    _require(queries, "queries", ("id", "text"))
    _require(docs, "docs", ("id", "text"))
    query_ids, doc_ids = _check_ids(queries, "queries"), _check_ids(docs, "docs")
    if not doc_ids:
        raise ValueError("retrieval: the corpus is empty")
    return query_ids, doc_ids, qrels_dict(qrels, query_ids, doc_ids)


def score_retrieval(
    embed: EmbedFn,
    queries: pd.DataFrame,
    docs: pd.DataFrame,
    qrels: pd.DataFrame,
    *,
    long_documents: str = "truncate",
    chunker: Chunker | None = None,
    top_k: int = TOP_K,
) -> TaskResult:
    """Exact cosine retrieval of `docs` (id, title, text) for `queries` (id, text).

    `qrels` has columns query_id, doc_id, relevance (> 0 is relevant). `long_documents` is
    "truncate" (one embedding per document; the encoder cuts it at its maximum length) or
    "max_chunk" (a document's score is its best window's cosine; needs `chunker`, see
    `make_chunker`).
    """
    if long_documents not in LONG_DOCUMENTS:
        raise ValueError(f"long_documents={long_documents!r}; expected one of {', '.join(LONG_DOCUMENTS)}")
    if long_documents == "max_chunk" and chunker is None:
        raise ValueError("long_documents='max_chunk' needs a chunker (see simcse_ops.domain.make_chunker)")
    query_ids, doc_ids, rel = _retrieval_inputs(queries, docs, qrels)
    t0 = time.perf_counter()
    texts = _doc_texts(docs)
    if long_documents == "max_chunk":
        windows = [chunker(t) or [t] for t in texts]
    else:
        windows = [[t] for t in texts]
    counts = np.array([len(w) for w in windows])
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first window of each doc
    flat = [w for ws in windows for w in ws]
    t_chunk = time.perf_counter() - t0

    index, emb = embed_unique(embed, queries["text"].astype(str).tolist() + flat)
    emb = _unit_rows(emb)
    q_emb = emb[[index[s] for s in queries["text"].astype(str)]]  # (Q, D)
    w_emb = emb[[index[s] for s in flat]]  # (W, D)
    t_encode = time.perf_counter() - t0 - t_chunk

    def scores(block: slice) -> np.ndarray:
        cos = q_emb[block] @ w_emb.T  # (B, W)
        return np.maximum.reduceat(cos, firsts, axis=1) if len(flat) > len(texts) else cos  # (B, n_docs)

    run = top_k_run(scores, len(query_ids), query_ids, doc_ids, top_k)
    t_search = time.perf_counter() - t0 - t_chunk - t_encode
    items = trec_items(rel, run, query_ids)
    timing = {
        "chunk_s": round(t_chunk, 3),
        "encode_s": round(t_encode, 3),
        "search_s": round(t_search, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    details = {
        "long_documents": long_documents,
        "n_docs": len(doc_ids),
        "n_windows": int(len(flat)),
        "n_docs_split": int((counts > 1).sum()),
        "top_k": top_k,
    }
    return _retrieval_result(items, timing, details)


# --------------------------------------------------------------------------------------------
# Lexical baseline


def score_bm25(
    queries: pd.DataFrame,
    docs: pd.DataFrame,
    qrels: pd.DataFrame,
    *,
    k1: float = 1.5,
    b: float = 0.75,
    stem: bool = False,
    top_k: int = TOP_K,
) -> TaskResult:
    """BM25 (bm25s, Lucene variant) over `docs` for `queries`, scored like `score_retrieval`.

    Tokens: bm25s's tokenizer (lower-case, `\\b\\w\\w+\\b`) minus its English stopwords.
    `stem=True` adds PyStemmer's English Snowball stemmer (an optional package; an error says
    so when it is missing).
    """
    import bm25s

    query_ids, doc_ids, rel = _retrieval_inputs(queries, docs, qrels)
    stemmer = None
    if stem:
        try:
            import Stemmer
        except ImportError as e:
            raise ImportError("score_bm25(stem=True) needs PyStemmer: pip install PyStemmer") from e
        stemmer = Stemmer.Stemmer("english").stemWords
    t0 = time.perf_counter()
    corpus = bm25s.tokenize(_doc_texts(docs), stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index(corpus, show_progress=False)
    t_index = time.perf_counter() - t0
    q_tokens = bm25s.tokenize(
        queries["text"].astype(str).tolist(), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )

    def scores(block: slice) -> np.ndarray:
        rows = [
            retriever.get_scores(list(q)) if q else np.zeros(len(doc_ids), dtype=np.float32)
            for q in q_tokens[block]
        ]
        return np.vstack(rows)  # (B, n_docs)

    run = top_k_run(scores, len(query_ids), query_ids, doc_ids, top_k)
    t_search = time.perf_counter() - t0 - t_index
    items = trec_items(rel, run, query_ids)
    timing = {
        "index_s": round(t_index, 3),
        "search_s": round(t_search, 3),
        "total_s": round(time.perf_counter() - t0, 3),
    }
    details = {
        "k1": k1,
        "b": b,
        "stopwords": "bm25s english",
        "stemmer": "PyStemmer english" if stem else None,
        "n_docs": len(doc_ids),
        "n_empty_queries": int(sum(1 for q in q_tokens if not q)),
        "top_k": top_k,
    }
    return _retrieval_result(items, timing, details)
