"""The normalised Parquet schemas that ingest writes and every later stage reads.

One schema per data *kind*; each source's format maps to exactly one kind. `line` is the 1-based
line (or record) number in `file`, kept for error messages and the dedup audit trail.
"""

from __future__ import annotations

import pyarrow as pa

# STS evaluation pairs (STS12-16, STS-B, SICK). `subset` is the SemEval file's dataset name
# (e.g. "MSRpar"); `split` is train/dev/test for sources that carry splits, else "test".
STS = pa.schema(
    [
        ("split", pa.string()),
        ("subset", pa.string()),
        ("sentence1", pa.string()),
        ("sentence2", pa.string()),
        ("score", pa.float64()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# Unlabelled sentences (training corpora and domain corpora). `doc` identifies the document
# (WikiExtractor doc id, PubMed id, or "" for one-sentence-per-line files).
CORPUS = pa.schema(
    [
        ("text", pa.string()),
        ("doc", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# Supervised SimCSE triples: the anchor, its entailed positive and a contradiction hard negative.
NLI = pa.schema(
    [
        ("anchor", pa.string()),
        ("positive", pa.string()),
        ("negative", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# SEAT tests: one row per sentence; `set` is targ1/targ2/attr1/attr2, `category` its label.
SEAT = pa.schema(
    [
        ("test", pa.string()),
        ("set", pa.string()),
        ("category", pa.string()),
        ("text", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# CrowS-Pairs: a more-stereotyping and a less-stereotyping sentence differing in the group named.
CROWS_PAIRS = pa.schema(
    [
        ("sent_more", pa.string()),
        ("sent_less", pa.string()),
        ("stereo_antistereo", pa.string()),
        ("bias_type", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# Labelled pair classification (a domain evaluation set such as Medical Question Pairs): label 1
# when the two sentences mean the same, 0 otherwise. `group` is the unit that must stay on one
# side of a split (MQP: question_1, which has one similar and one different pair); "" when none.
PAIRS = pa.schema(
    [
        ("split", pa.string()),
        ("group", pa.string()),
        ("sentence1", pa.string()),
        ("sentence2", pa.string()),
        ("label", pa.int8()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# Retrieval (BEIR layout) as one long table; `record` says which columns apply:
#   "query": split (dev/test), id, text
#   "doc":   id, title, text; split "" (the searched corpus is shared by every split)
#   "qrel":  split, query_id, doc_id, relevance; id, title and text ""
# query_id, doc_id and relevance are null on query and doc rows.
RETRIEVAL = pa.schema(
    [
        ("record", pa.string()),
        ("split", pa.string()),
        ("id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("relevance", pa.int64()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

# Unlabelled positive pairs for contrastive training (a question and its abstract, a sentence and
# the rest of its abstract): the in-batch negatives come from the other rows. `doc` identifies
# the document the pair was mined from (the PMID).
TEXT_PAIRS = pa.schema(
    [
        ("anchor", pa.string()),
        ("positive", pa.string()),
        ("doc", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
    ]
)

KINDS: dict[str, pa.Schema] = {
    "sts": STS,
    "corpus": CORPUS,
    "nli": NLI,
    "seat": SEAT,
    "crows_pairs": CROWS_PAIRS,
    "pairs": PAIRS,
    "retrieval": RETRIEVAL,
    "text_pairs": TEXT_PAIRS,
}
