"""The validate stage end to end (after the dedup stage) on small ingested tables with the real
schemas; bad data fails with the source, the check and the observed value; with DVC, nothing
downstream of a failed validation runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from simcse_ops.expectations import ValidationFailed
from stages import dedup as dedup_stage
from stages import validate as stage
from tests.hygiene_fixtures import corpus_table, nli_table, real_sentences, sts_table, write_project

ROWS = {"evalset": {"test": 6, "dev": 4}}


@pytest.fixture(scope="module")
def sents(data_root):
    return real_sentences(data_root, 80)


def _project(tmp_path, sents, *, corpus=None, eval_rows=None, nli=None):
    pairs = eval_rows or [(sents[k], sents[k + 1], float(k % 5)) for k in range(0, 20, 2)]
    splits = ["test"] * 6 + ["dev"] * 4
    return write_project(tmp_path, {
        "evalset": ("sts", "eval-sts", sts_table(pairs, split=splits[: len(pairs)])),
        "wiki": ("corpus", "train-unsup", corpus_table(sents[20:50] if corpus is None else corpus)),
        "nli": ("nli", "train-sup", nli_table(nli or [(sents[k], sents[k + 1], sents[k + 2]) for k in range(50, 77, 3)])),
    }, validate={"sts": {"row_counts": {"expected": ROWS}}})


def _dedup(tmp_path, params):
    dedup_stage.main(["--params", str(params), "--data", str(tmp_path / "ingested"), "--out",
                      str(tmp_path / "clean"), "--metrics", str(tmp_path / "dedup.json"),
                      "--audit", str(tmp_path / "audit.parquet")])


def _validate(tmp_path, params):
    return stage.main(["--params", str(params), "--clean", str(tmp_path / "clean"),
                       "--ingested", str(tmp_path / "ingested"), "--metrics", str(tmp_path / "validate.json"),
                       "--docs", str(tmp_path / "docs"), "--ok", str(tmp_path / "validated.json")])


def test_clean_data_passes(tmp_path, sents):
    params, _ = _project(tmp_path, sents)
    _dedup(tmp_path, params)
    summary = _validate(tmp_path, params)
    assert summary["success"] and summary["critical_failures"] == 0
    assert set(summary["batches"]) == {"evalset/test", "evalset/dev", "wiki", "nli"}
    assert json.loads((tmp_path / "validate.json").read_text())["success"] is True
    ok = json.loads((tmp_path / "validated.json").read_text())
    assert set(ok["validated"]) == {str(tmp_path / "clean" / "wiki.parquet"), str(tmp_path / "clean" / "nli.parquet"),
                                    str(tmp_path / "ingested" / "evalset.parquet")}
    assert (tmp_path / "docs" / "index.html").is_file()
    # Same data, same rules: the file training depends on does not change.
    before = (tmp_path / "validated.json").read_bytes()
    _validate(tmp_path, params)
    assert (tmp_path / "validated.json").read_bytes() == before


def _fails(tmp_path, params, *needles):
    with pytest.raises(ValidationFailed) as e:
        _validate(tmp_path, params)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert not (tmp_path / "validated.json").exists()
    assert json.loads((tmp_path / "validate.json").read_text())["success"] is False
    assert (tmp_path / "docs" / "index.html").is_file()  # the report is there to read
    return msg


def test_nulls_in_training_data(tmp_path, sents):
    params, _ = _project(tmp_path, sents, corpus=sents[20:50] + [None])
    _dedup(tmp_path, params)  # dedup passes nulls through; validation owns the rule
    _fails(tmp_path, params, "wiki (", "not_null [critical]", "expect_column_values_to_not_be_null on text",
           "observed 1 of 31 rows")


def test_out_of_range_score(tmp_path, sents):
    rows = [(sents[k], sents[k + 1], 2.0) for k in range(0, 20, 2)]
    rows[3] = (rows[3][0], rows[3][1], 5.5)
    params, _ = _project(tmp_path, sents, eval_rows=rows)
    _dedup(tmp_path, params)
    _fails(tmp_path, params, "evalset/test", "score_range", "5.5", "max_value=5.0")


def test_eval_row_count_must_be_exact(tmp_path, sents):
    rows = [(sents[k], sents[k + 1], 2.0) for k in range(0, 18, 2)]  # 9 rows: dev has 3, not 4
    params, _ = _project(tmp_path, sents, eval_rows=rows)
    _dedup(tmp_path, params)
    _fails(tmp_path, params, "evalset/dev", "row_counts", "observed 3", "value=4")


def test_empty_corpus(tmp_path, sents):
    params, _ = _project(tmp_path, sents, corpus=[])
    _dedup(tmp_path, params)
    assert pq.read_table(tmp_path / "clean" / "wiki.parquet").num_rows == 0
    _fails(tmp_path, params, "wiki (", "row_count [critical]", "observed 0")


def test_duplicates_that_bypassed_dedup(tmp_path, sents):
    params, _ = _project(tmp_path, sents)
    _dedup(tmp_path, params)
    table = pq.read_table(tmp_path / "clean" / "wiki.parquet")
    pq.write_table(pa.concat_tables([table, table.slice(0, 5)]), tmp_path / "clean" / "wiki.parquet")
    _fails(tmp_path, params, "wiki (", "unique [critical]", "observed 10 of 35 rows")


def test_warning_only_does_not_fail(tmp_path, sents):
    params, _ = _project(tmp_path, sents)
    raw = yaml.safe_load(params.read_text())
    raw["validate"]["corpus"] = {"length_tokens": {"severity": "warning", "min": 30, "max": 128, "mostly": 1.0}}
    params.write_text(yaml.safe_dump(raw))
    _dedup(tmp_path, params)
    summary = _validate(tmp_path, params)
    assert summary["success"] and summary["warnings"] >= 1
    assert summary["batches"]["wiki"]["failed_warning"] == 1
    assert (tmp_path / "validated.json").is_file()


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_repro_stops_before_training(tmp_path, sents, project_root):
    """A real `dvc repro` in a scratch project: dedup -> validate -> a stand-in training stage.
    Good data trains; an eval set with an out-of-range score stops the pipeline at validate."""
    if shutil.which("dvc") is None:
        pytest.skip("dvc is not installed")
    params, ingested = _project(tmp_path, sents)
    dvc_yaml = {
        "stages": {
            "dedup": {
                "cmd": "python -m stages.dedup --params params.yaml --data ingested --out clean "
                       "--metrics dedup.json --audit audit.parquet",
                "deps": ["ingested"], "params": ["dedup"],
                "outs": ["clean", "audit.parquet"], "metrics": [{"dedup.json": {"cache": False}}],
            },
            "validate": {
                "cmd": "python -m stages.validate --params params.yaml --clean clean --ingested ingested "
                       "--metrics validate.json --docs docs --ok validated.json",
                "deps": ["clean", "ingested"], "params": ["validate"],
                "outs": ["validated.json", "docs"], "metrics": [{"validate.json": {"cache": False}}],
            },
            "train": {
                "cmd": "python -c \"open('model.txt', 'w').write('trained')\"",
                "deps": ["clean", "validated.json"], "outs": ["model.txt"],
            },
        }
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{project_root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    assert run("init", "--no-scm", "-q").returncode == 0
    r = run("repro", "train")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "model.txt").read_text() == "trained"
    shown = run("metrics", "show", "--json")
    assert "contamination_exact" in shown.stdout and "critical_failures" in shown.stdout

    (tmp_path / "model.txt").unlink()
    rows = [(sents[k], sents[k + 1], 2.0) for k in range(0, 20, 2)]
    rows[0] = (rows[0][0], rows[0][1], -1.0)
    pq.write_table(sts_table(rows, split=["test"] * 6 + ["dev"] * 4), ingested / "evalset.parquet")
    r = run("repro", "train")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "evalset/test" in out and "score_range" in out and "-1.0" in out
    assert not (tmp_path / "model.txt").exists()
