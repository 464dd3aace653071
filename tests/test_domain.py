"""Domain scoring on hand-computed toy tasks, BM25, and the long-document chunker."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from simcse_ops.domain import (
    doc_text,
    make_chunker,
    score_bm25,
    score_pairs,
    score_retrieval,
    with_intervals,
)

VOCAB = ("apple", "banana", "cherry", "date")


def bag_of_words(texts: list[str]) -> np.ndarray:
    """Deterministic fake encoder: counts of the four VOCAB words."""
    out = np.zeros((len(texts), len(VOCAB)), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.replace("|", " ").split():
            if w in VOCAB:
                out[i, VOCAB.index(w)] += 1
    return out


DOCS = pd.DataFrame(
    {
        "id": ["d1", "d2", "d3", "d4"],
        "title": ["", "", "apple", ""],
        "text": ["apple apple", "banana", "banana", "cherry"],
    }
)
QUERIES = pd.DataFrame({"id": ["q1", "q2", "q3"], "text": ["apple", "banana banana cherry", "date"]})
QRELS = pd.DataFrame(
    {
        "query_id": ["q1", "q2", "q2", "q3", "q3"],
        "doc_id": ["d3", "d2", "d4", "d1", "d2"],
        "relevance": [1, 2, 1, 1, 0],
    }
)


def test_doc_text_joins_title():
    assert doc_text("apple", "banana") == "apple banana"
    assert doc_text("", "banana") == "banana"
    assert doc_text(None, "banana") == "banana"
    assert doc_text(float("nan"), "banana") == "banana"


def test_retrieval_metrics_by_hand():
    r = score_retrieval(bag_of_words, QUERIES, DOCS, QRELS)
    # d3 is "apple banana" (title + text).
    # q1 "apple": cos d1 = 1, d3 = 1/sqrt2, d2 = d4 = 0 -> the relevant d3 is at rank 2.
    # q2 "banana banana cherry" = (0,2,1,0)/sqrt5: d2 = 2/sqrt5, d3 = 2/sqrt10, d4 = 1/sqrt5, d1 = 0
    #    -> ranks d2 (rel 2), d3, d4 (rel 1), d1.
    # q3 "date": every cosine is 0; trec_eval breaks ties by doc id descending: d4 d3 d2 d1 -> d1 at rank 4.
    ndcg = {
        "q1": 1 / math.log2(3),
        "q2": (2 / math.log2(2) + 1 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3)),
        "q3": 1 / math.log2(5),
    }
    mrr = {"q1": 1 / 2, "q2": 1.0, "q3": 1 / 4}
    recall1 = {"q1": 0.0, "q2": 1 / 2, "q3": 0.0}
    assert r.kind == "retrieval" and r.n == 3
    assert r.items["id"] == ["q1", "q2", "q3"]
    np.testing.assert_allclose(r.items["ndcg@10"], [ndcg[q] for q in ("q1", "q2", "q3")], atol=1e-9)
    np.testing.assert_allclose(r.items["mrr@10"], [mrr[q] for q in ("q1", "q2", "q3")], atol=1e-9)
    np.testing.assert_allclose(r.items["recall@1"], [recall1[q] for q in ("q1", "q2", "q3")], atol=1e-9)
    assert r.items["recall@10"] == [1.0, 1.0, 1.0]
    assert r.items["recall@100"] == [1.0, 1.0, 1.0]
    assert r.metrics["ndcg@10"] == pytest.approx(round(100 * np.mean(list(ndcg.values())), 4))
    assert r.metrics["mrr@10"] == pytest.approx(round(100 * np.mean(list(mrr.values())), 4))
    assert r.metrics["recall@1"] == pytest.approx(100 / 6, abs=1e-4)


def test_retrieval_top_k_cuts_the_run():
    r = score_retrieval(bag_of_words, QUERIES, DOCS, QRELS, top_k=2)
    # q3's relevant d1 is 4th: out of a top-2 run
    assert r.items["recall@100"] == [1.0, 0.5, 0.0]


def test_mrr_counts_only_the_top_10():
    docs = pd.DataFrame({"id": [f"d{i:02d}" for i in range(12)], "title": "", "text": "banana"})
    docs.loc[0, "text"] = "apple"  # the only doc with cosine 1 to the query, but not relevant
    queries = pd.DataFrame({"id": ["q"], "text": ["apple banana"]})
    # every other doc ties; ids descending: d11 d10 ... d01; the relevant d01 comes 12th
    qrels = pd.DataFrame({"query_id": ["q"], "doc_id": ["d01"], "relevance": [1]})
    r = score_retrieval(bag_of_words, queries, docs, qrels)
    assert r.items["mrr@10"] == [0.0]
    assert r.items["recall@100"] == [1.0]


def test_queries_without_relevant_docs_are_named():
    qrels = QRELS[QRELS["query_id"] != "q3"]
    with pytest.raises(ValueError, match=r"no relevant document.*\['q3'\]"):
        score_retrieval(bag_of_words, QUERIES, DOCS, qrels)
    bad = pd.concat([QRELS, pd.DataFrame({"query_id": ["q1"], "doc_id": ["d9"], "relevance": [1]})])
    with pytest.raises(ValueError, match=r"not in the corpus: \['d9'\]"):
        score_retrieval(bag_of_words, QUERIES, DOCS, bad)


def test_max_chunk_scores_a_doc_by_its_best_window():
    docs = pd.DataFrame({"id": ["dA", "dB"], "title": "", "text": ["cherry cherry | apple", "apple cherry"]})
    queries = pd.DataFrame({"id": ["q"], "text": ["apple"]})
    qrels = pd.DataFrame({"query_id": ["q"], "doc_id": ["dA"], "relevance": [1]})

    def chunker(text: str) -> list[str]:
        return text.split("|")

    # whole docs: dA = 1/sqrt5 < dB = 1/sqrt2; dA's window "apple" has cosine 1
    truncate = score_retrieval(bag_of_words, queries, docs, qrels)
    assert truncate.items["mrr@10"] == [0.5]
    chunked = score_retrieval(bag_of_words, queries, docs, qrels, long_documents="max_chunk", chunker=chunker)
    assert chunked.items["mrr@10"] == [1.0]
    assert chunked.details["n_windows"] == 3 and chunked.details["n_docs_split"] == 1
    with pytest.raises(ValueError, match="needs a chunker"):
        score_retrieval(bag_of_words, queries, docs, qrels, long_documents="max_chunk")
    with pytest.raises(ValueError, match="long_documents='first'"):
        score_retrieval(bag_of_words, queries, docs, qrels, long_documents="first")


def test_bm25_ranks_the_lexical_match_first():
    docs = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "title": ["", "Diabetes", "", ""],
            "text": [
                "The weather today is sunny and warm.",
                "Insulin resistance raises fasting glucose in patients.",
                "Glucose is a sugar.",
                "Cats sleep most of the day.",
            ],
        }
    )
    queries = pd.DataFrame({"id": ["q1", "q2"], "text": ["insulin and fasting glucose", "sleeping cats"]})
    qrels = pd.DataFrame({"query_id": ["q1", "q2"], "doc_id": ["b", "d"], "relevance": [1, 1]})
    r = score_bm25(queries, docs, qrels)
    assert r.items["recall@1"] == [1.0, 1.0]
    assert r.metrics["ndcg@10"] == 100.0 and r.metrics["mrr@10"] == 100.0
    assert r.details["stemmer"] is None


def test_score_pairs_separable_is_perfect():
    pairs = pd.DataFrame(
        {
            "sentence1": ["apple", "apple", "banana", "banana", "cherry", "cherry"],
            "sentence2": ["apple apple", "banana", "banana", "date", "cherry", "apple"],
            "label": [1, 0, 1, 0, 1, 0],
            "group": ["g1", "g1", "g2", "g2", "g3", "g3"],
        }
    )
    r = score_pairs(bag_of_words, pairs)
    assert r.kind == "pairs" and r.n == 6
    assert r.metrics == {"ap": 100.0, "roc_auc": 100.0}
    assert r.items["id"] == ["0", "1", "2", "3", "4", "5"]
    assert r.items["score"] == pytest.approx([1, 0, 1, 0, 1, 0])
    assert r.details["n_sentences_encoded"] == 5  # apple, banana, cherry, apple apple, date
    out = with_intervals(r, n_resamples=50)
    assert out["ci"] == {"ap": [100.0, 100.0], "roc_auc": [100.0, 100.0]}
    json.dumps(out)  # JSON-ready


def test_score_pairs_ap_auc_by_hand():
    # cosines: 1 (+), 2/sqrt5 = 0.894 (-), 1/sqrt2 = 0.707 (+), 0 (-)
    pairs = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "sentence1": ["apple", "banana banana cherry", "apple banana", "apple"],
            "sentence2": ["apple", "banana", "apple", "date"],
            "label": [1, 0, 1, 0],
        }
    )
    r = score_pairs(bag_of_words, pairs)
    # ranking + - + -: AP = (1 + 2/3)/2; AUC = 3 of 4 (pos, neg) pairs ordered
    assert r.metrics["ap"] == pytest.approx(100 * (1 + 2 / 3) / 2, abs=1e-4)
    assert r.metrics["roc_auc"] == pytest.approx(75.0)
    assert r.items["group"] == []


def test_with_intervals_retrieval_is_json_ready():
    r = score_retrieval(bag_of_words, QUERIES, DOCS, QRELS)
    out = with_intervals(r, n_resamples=100, seed=1)
    assert set(out["ci"]) == set(r.metrics)
    for name, (low, high) in out["ci"].items():
        assert low <= r.metrics[name] <= high
    json.loads(json.dumps(out))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from simcse_ops.encoder import default_model_path

    return AutoTokenizer.from_pretrained(str(default_model_path()))


def _spans(text: str, windows: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for w in windows:
        start = text.find(w, pos)
        assert start >= 0, "windows are slices of the text, in order"
        spans.append((start, start + len(w)))
        pos = start + 1
    return spans


@pytest.mark.parametrize("max_tokens, overlap", [(32, 8), (256, 32)])
def test_chunker_covers_every_token_and_fits(tokenizer, max_tokens, overlap):
    text = " ".join(
        f"Sentence {i} on pneumonoultramicroscopicsilicovolcanoconiosis, HbA1c (7.5%) and β-blockers."
        for i in range(60)
    )
    chunk = make_chunker(tokenizer, max_tokens, overlap=overlap)
    windows = chunk(text)
    assert len(windows) > 1
    for w in windows:
        assert len(tokenizer(w)["input_ids"]) <= max_tokens  # with [CLS] and [SEP]
    spans = _spans(text, windows)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for s, e in offsets:
        assert any(a <= s and e <= b for a, b in spans), f"token at {s}:{e} is in no window"
    # consecutive windows overlap
    assert all(spans[i + 1][0] < spans[i][1] for i in range(len(spans) - 1))


def test_chunker_keeps_a_short_text_whole(tokenizer):
    chunk = make_chunker(tokenizer, 256)
    assert chunk("A short abstract.") == ["A short abstract."]
    with pytest.raises(ValueError, match="overlap"):
        make_chunker(tokenizer, 32, overlap=30)
