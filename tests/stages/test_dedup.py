"""The dedup stage end to end on small ingested tables (real schemas, real sentences), and once
on the real published data (slow)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from simcse_ops.dedup import deduplicate, normalize_many, plan_sources
from simcse_ops.errors import DataError
from simcse_ops.readers import FORMATS, load_source
from simcse_ops.schemas import CORPUS, NLI
from stages import dedup as stage
from tests.hygiene_fixtures import corpus_table, nli_table, real_sentences, sts_table, write_project


def _run(tmp_path, params):
    out = tmp_path / "clean"
    metrics = tmp_path / "metrics" / "dedup.json"
    audit = tmp_path / "reports" / "dedup_audit.parquet"
    stage.main(["--params", str(params), "--data", str(tmp_path / "ingested"), "--out", str(out),
                "--metrics", str(metrics), "--audit", str(audit)])
    return out, json.loads(metrics.read_text()), pd.read_parquet(audit)


def test_planted_eval_sentence_is_removed_and_audited(tmp_path, data_root):
    s = real_sentences(data_root, 70)
    eval_pairs = [(s[k], s[k + 1], 3.0) for k in range(0, 10, 2)]
    planted = s[4]  # sentence1 of eval line 3
    corpus = s[10:40] + [planted]
    # Row 2's positive is s[2] (eval line 2, sentence1) lower-cased.
    triples = [(s[40], s[41], s[42]), (s[43], s[2].lower(), s[44])] + \
        [(s[k], s[k + 1], s[k + 2]) for k in range(45, 66, 3)]
    params, _ = write_project(tmp_path, {
        "evalset": ("sts", "eval-sts", sts_table(eval_pairs, file="sts/STS.input.x.txt")),
        "wiki": ("corpus", "train-unsup", corpus_table(corpus, file="corpus/wiki.txt")),
        "nli": ("nli", "train-sup", nli_table(triples, file="nli/snli.jsonl")),
    })
    out, metrics, audit = _run(tmp_path, params)

    wiki = pq.read_table(out / "wiki.parquet")
    assert wiki.schema.equals(CORPUS)
    assert wiki.num_rows == 30 and planted not in wiki.column("text").to_pylist()
    nli = pq.read_table(out / "nli.parquet")
    assert nli.schema.equals(NLI) and nli.num_rows == len(triples) - 1

    row = audit[audit.source == "wiki"].iloc[0]
    assert (row.file, row.line, row.reason) == ("corpus/wiki.txt", 31, "contamination_exact")
    assert (row.matched_source, row.matched_file, row.matched_line, row.matched_field) == \
        ("evalset", "sts/STS.input.x.txt", 3, "sentence1")
    row = audit[audit.source == "nli"].iloc[0]
    assert (row.line, row.field, row.matched_line) == (2, "positive", 2)

    d = metrics["decontamination"]
    assert d["by_training_source"]["wiki"] == {"exact": 1, "near": 0, "total": 1}
    assert d["by_training_source"]["nli"]["total"] == 1
    assert d["by_eval_set"] == {"evalset": 2}
    assert metrics["sources"]["wiki"]["rows_out"] == 30


def test_half_duplicated_corpus_fails_with_the_reason(tmp_path, data_root):
    s = real_sentences(data_root, 24)
    params, _ = write_project(tmp_path, {
        "evalset": ("sts", "eval-sts", sts_table([(s[0], s[1], 1.0)])),
        "wiki": ("corpus", "train-unsup", corpus_table(s[2:22] + s[2:22], file="corpus/wiki.txt")),
    })
    with pytest.raises(DataError) as e:
        _run(tmp_path, params)
    msg = str(e.value)
    assert "wiki.parquet" in msg and "20 of 40 rows to remove" in msg and "exact_duplicate 20" in msg
    assert "dedup.max_removed_fraction" in msg
    assert not (tmp_path / "clean").exists()  # nothing for the next stage to read
    # ... but the audit and the counts are there to look at.
    assert len(pd.read_parquet(tmp_path / "reports" / "dedup_audit.parquet")) == 20


def test_missing_ingested_source_names_the_file(tmp_path, data_root):
    s = real_sentences(data_root, 4)
    params, ingested = write_project(tmp_path, {
        "evalset": ("sts", "eval-sts", sts_table([(s[0], s[1], 1.0)])),
        "wiki": ("corpus", "train-unsup", corpus_table(s[2:])),
    })
    (ingested / "evalset.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="evalset.parquet: not found; run the ingest stage"):
        _run(tmp_path, params)


@pytest.mark.slow
def test_real_data_decontamination(tmp_path, params, data_root):
    """The real published files: SNLI shares Flickr captions with SICK and STS-B; expect hits."""
    cfg = params.dedup
    train_names, eval_names = plan_sources(params, cfg)
    assert {"sts12", "sts16", "stsb", "sick", "sick_full"} <= set(eval_names)
    wanted = ["snli", "nli_for_simcse", "wiki1m"]

    def load(n):
        return FORMATS[params.sources[n].format].kind, load_source(n, params.sources[n], data_root).table

    evals = {n: load(n) for n in eval_names}
    res = deduplicate({n: load(n) for n in wanted}, evals, cfg)
    d = res.metrics["decontamination"]
    assert d["by_training_source"]["snli"]["exact"] > 50
    assert d["by_training_source"]["snli"]["near"] > 0
    assert d["by_eval_set"]["sick/test"] > 0 and d["by_eval_set"]["stsb/test"] > 0
    # No clean SNLI sentence equals an evaluation sentence.
    ev = set()
    for kind, t in evals.values():
        if kind == "retrieval":  # a retrieval set's evaluation text is its queries
            rows = t.to_pydict()
            ev.update(normalize_many([x for r, x in zip(rows["record"], rows["text"]) if r == "query"]))
            continue
        for c in ("sentence1", "sentence2"):
            ev.update(normalize_many(t.column(c).to_pylist()))
    assert {"mqp", "pubmedqa_conclusion"} <= set(eval_names)
    snli = load("snli")[1].filter(res.keep["snli"])
    for c in ("anchor", "positive", "negative"):
        assert not ev.intersection(normalize_many(snli.column(c).to_pylist()))
