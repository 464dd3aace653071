"""Training data: a pairs variant mixing mined pairs with unsupervised sentences (x, x)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from simcse_ops import schemas
from simcse_ops.training_data import load_training_texts


def write(tmp_path):
    pq.write_table(pa.table({"anchor": ["Does X cause Y?", "Is Z safe?"], "positive": ["X causes Y.", "Z is safe."], "doc": ["1", "2"],
                             "file": ["p", "p"], "line": [1, 2]}, schema=schemas.TEXT_PAIRS),
                   tmp_path / "pairs.parquet")
    pq.write_table(pa.table({"text": ["Cells divide.", "Mice were fed."], "doc": ["1", "2"], "file": ["c", "c"],
                             "line": [1, 2]}, schema=schemas.CORPUS), tmp_path / "sentences.parquet")


def test_a_pairs_variant_reads_corpus_sentences_as_their_own_positive(tmp_path):
    write(tmp_path)
    texts = load_training_texts(tmp_path, ["pairs", "sentences"], "pairs")
    assert texts == {"anchor": ["Does X cause Y?", "Is Z safe?", "Cells divide.", "Mice were fed."],
                     "positive": ["X causes Y.", "Z is safe.", "Cells divide.", "Mice were fed."]}
    # the other methods read their own columns only
    assert load_training_texts(tmp_path, ["sentences"], "unsup") == {"text": ["Cells divide.", "Mice were fed."]}
