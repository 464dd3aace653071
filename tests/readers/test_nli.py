"""NLI readers on the real files: SNLI triples and the nli_for_simcse.csv head."""

from __future__ import annotations

import gzip
import json

from simcse_ops.schemas import NLI


def test_snli_triples_documented_count(real_source):
    result = real_source("snli")
    assert result.table.schema.equals(NLI)
    rows = result.table.to_pylist()
    by_file = {}
    for r in rows:
        by_file[r["file"]] = by_file.get(r["file"], 0) + 1
    assert by_file == {"nli/snli_1.0/snli_1.0_dev.jsonl.gz": 2943,
                       "nli/snli_1.0/snli_1.0_test.jsonl.gz": 2921}
    assert result.stats["no_gold"] == 158 + 176


def test_snli_triple_is_first_entailment_and_contradiction(real_source, data_root):
    rows = real_source("snli").table.to_pylist()
    first = rows[0]
    records = [json.loads(x) for x in gzip.open(data_root / first["file"], "rt")]
    group = [r for r in records if r["sentence1"] == first["anchor"] and r["gold_label"] != "-"]
    assert first["positive"] == next(r["sentence2"] for r in group if r["gold_label"] == "entailment")
    assert first["negative"] == next(r["sentence2"] for r in group if r["gold_label"] == "contradiction")
    assert records[first["line"] - 1]["sentence1"] == first["anchor"]


def test_nli_csv_head(real_source):
    result = real_source("nli_for_simcse")
    rows = result.table.to_pylist()
    assert len(rows) == 72
    assert rows[0]["positive"] == "You lose the things to the following level if the people recall."
    assert rows[0]["negative"] == "They never perform recalls on anything."
    assert rows[0]["line"] == 2
    assert not any(v.endswith("\r") for r in rows for v in (r["anchor"], r["positive"], r["negative"]))
