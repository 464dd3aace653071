"""The kind registry (`simcse_ops.schemas.KINDS`) and the format registry
(`simcse_ops.readers.FORMATS`) that maps every published format onto it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from simcse_ops.readers import FORMATS
from simcse_ops.schemas import CORPUS, KINDS, TRAINED_KINDS, TRAINING_COLUMNS, Kind


def test_every_format_makes_a_registered_kind():
    assert FORMATS and all(f.kind in KINDS for f in FORMATS.values())
    assert {f.kind for f in FORMATS.values()} == set(KINDS)  # no kind without a reader
    assert [n for n, f in FORMATS.items() if f.folders] == ["beir"]


def test_text_columns_are_string_columns_of_the_schema():
    for kind in KINDS.values():
        assert kind.text_columns
        for c in kind.text_columns:
            assert kind.schema.field(c).type == pa.string(), (kind.name, c)


def test_trained_kinds_and_their_methods():
    assert TRAINED_KINDS == ("corpus", "nli", "text_pairs")
    assert TRAINING_COLUMNS == {"unsup": ("text",), "sup": ("anchor", "positive", "negative"),
                                "pairs": ("anchor", "positive")}
    assert [k.name for k in KINDS.values() if k.eval_record] == ["retrieval"]


def test_a_kind_must_name_columns_of_its_schema():
    with pytest.raises(ValueError, match="'sentence' is not a string column"):
        Kind("bad", CORPUS, ("sentence",))
    with pytest.raises(ValueError, match="'record' is not a string column"):
        Kind("bad", CORPUS, ("text",), eval_record="query")
