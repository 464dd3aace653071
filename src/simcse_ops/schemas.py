"""The data kinds: the normalised Parquet schemas that ingest writes and every later stage reads,
and the one registry of what each kind is.

`KINDS[name]` is a `Kind`: its Arrow schema, its text columns (what dedup compares and collects as
evaluation text, what validate checks, what training encodes), the training method that trains on
it (None: evaluation data only) and, for a long table, the record whose text is evaluation text.
`TRAINED_KINDS` and `TRAINING_COLUMNS` are derived from it. Each source's format maps to exactly
one kind (`simcse_ops.readers.FORMATS`). `line` is the 1-based line (or record) number in `file`,
kept for error messages and the dedup audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass

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



@dataclass(frozen=True)
class Kind:
    """One data kind: the schema of its tables and what the pipeline does with its rows."""

    name: str
    schema: pa.Schema
    # The sentences of a row, in order: dedup compares them (a row is one item) and collects them
    # as evaluation text, validate checks them, training encodes them.
    text_columns: tuple[str, ...]
    # The training method (`variants.<name>.method`) whose data has this kind; None: the kind is
    # never trained on (evaluation data), so dedup never cleans it.
    method: str | None = None
    # For a long table (a `record` column): the record whose text is evaluation text. Retrieval:
    # the queries; documents are unlabelled text a transductive setup may train on, qrels carry no
    # text. None: every row.
    eval_record: str | None = None

    def __post_init__(self) -> None:
        for c in (*self.text_columns, *(("record",) if self.eval_record else ())):
            if self.schema.get_field_index(c) < 0 or not pa.types.is_string(self.schema.field(c).type):
                raise ValueError(f"kind {self.name!r}: {c!r} is not a string column of its schema")

    @property
    def trained(self) -> bool:
        return self.method is not None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("sts", STS, ("sentence1", "sentence2")),
    Kind("corpus", CORPUS, ("text",), method="unsup"),
    Kind("nli", NLI, ("anchor", "positive", "negative"), method="sup"),
    Kind("seat", SEAT, ("text",)),
    Kind("crows_pairs", CROWS_PAIRS, ("sent_more", "sent_less")),
    Kind("pairs", PAIRS, ("sentence1", "sentence2")),
    Kind("retrieval", RETRIEVAL, ("text",), eval_record="query"),
    Kind("text_pairs", TEXT_PAIRS, ("anchor", "positive"), method="pairs"),
)}

# The kinds training reads (what dedup cleans), in KINDS order.
TRAINED_KINDS: tuple[str, ...] = tuple(n for n, k in KINDS.items() if k.trained)
# Training method -> the text columns of its rows (one kind per method).
TRAINING_COLUMNS: dict[str, tuple[str, ...]] = {k.method: k.text_columns for k in KINDS.values() if k.method}
