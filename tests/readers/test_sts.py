"""STS readers on the real published files: the official pair counts, split by split and subset."""

from __future__ import annotations

import pytest

from simcse_ops.readers import FORMATS, read_source
from simcse_ops.schemas import STS


def _subsets(result) -> dict[str, int]:
    return result.metrics()["subsets"]


@pytest.mark.parametrize(
    ("name", "total", "subsets"),
    [
        ("sts12", 3108, {"MSRpar": 750, "MSRvid": 750, "SMTeuroparl": 459,
                         "surprise.OnWN": 750, "surprise.SMTnews": 399}),
        ("sts13", 1500, {"FNWN": 189, "headlines": 750, "OnWN": 561}),
        ("sts14", 3750, {"deft-forum": 450, "deft-news": 300, "headlines": 750, "images": 750,
                         "OnWN": 750, "tweet-news": 750}),
        ("sts15", 3000, {"answers-forums": 375, "answers-students": 750, "belief": 375,
                         "headlines": 750, "images": 750}),
        ("sts16", 1186, {"answer-answer": 254, "headlines": 249, "plagiarism": 230,
                         "postediting": 244, "question-question": 209}),
    ],
)
def test_semeval_official_counts(real_source, name, total, subsets):
    result = real_source(name)
    assert result.table.schema.equals(STS)
    assert result.table.num_rows == total
    assert _subsets(result) == subsets
    assert set(result.table.column("split").to_pylist()) == {"test"}


def test_semeval_unscored_pairs_are_skipped_not_shifted(real_source, data_root):
    """STS15/16 gold files have blank lines for unscored pairs: (input file lines) - (rows)
    must equal the blank gold lines, and every row's score must come from the same line number
    of the gold file."""
    result = real_source("sts16")
    assert result.stats["unscored"] == 1318 + 1249 + 1041 + 3043 + 1346
    assert real_source("sts15").stats["unscored"] == (2000 - 375) + 750 + (2000 - 375) + 750 + 750
    rows = result.table.to_pylist()
    gold_cache: dict[str, list[str]] = {}
    for row in rows[::37]:
        gold = row["file"].replace(".input.", ".gs.")
        lines = gold_cache.setdefault(gold, (data_root / gold).read_text().split("\n"))
        assert float(lines[row["line"] - 1]) == row["score"]
        text = (data_root / row["file"]).read_text(encoding="utf-8").split("\n")[row["line"] - 1]
        assert text.split("\t")[0].strip() == row["sentence1"]


def test_sts16_source_notes_are_not_sentences(real_source):
    rows = real_source("sts16").table.to_pylist()
    assert not any("StackExchange Network" in r["sentence2"] or "\t" in r["sentence2"] for r in rows)


def test_stsb_splits_and_nine_field_lines(real_source):
    result = real_source("stsb")
    assert result.metrics()["splits"] == {"train": 5749, "dev": 1500, "test": 1379}
    rows = result.table.to_pylist()
    # literal double quotes survive (no CSV quoting), and the 9-field lines keep 7 fields
    assert sum('"' in r["sentence1"] + r["sentence2"] for r in rows) == 110 + 50 + 252
    assert {"main-captions", "main-news", "main-forum", "main-forums"} == set(_subsets(result))
    assert all(0.0 <= r["score"] <= 5.0 for r in rows)


def test_sick_semeval_splits(real_source):
    result = real_source("sick")
    assert result.metrics()["splits"] == {"train": 4500, "trial": 500, "test": 4927}
    rows = result.table.to_pylist()
    assert all(1.0 <= r["score"] <= 5.0 for r in rows)
    assert not any(r["sentence2"].endswith("\r") for r in rows)  # CRLF test file


def test_sick_full_semeval_set_column(real_source):
    result = real_source("sick_full")
    assert result.metrics()["splits"] == {"train": 4439, "trial": 495, "test": 4906}
    last = result.table.to_pylist()[-1]
    # CRLF and no newline after the last line: the last record is read whole
    assert last["line"] == 9841 and last["split"] == "train" and last["score"] == 1.0


def test_read_source_returns_the_kind_schema(params, data_root):
    table = read_source("sts13", params.sources["sts13"], data_root)
    assert FORMATS["semeval_sts"].kind == "sts"
    assert table.schema.equals(STS)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["file"] == "sts/STS13/STS.input.FNWN.txt" and first["line"] == 1
