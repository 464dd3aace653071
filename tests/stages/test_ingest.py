"""The ingest stage end to end on small params in tmp_path: Parquet per source, metrics,
`--only`, and atomicity (a failing ingest leaves no partial Parquet and the previous output
intact)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from simcse_ops.config import ConfigError
from simcse_ops.errors import DataError
from simcse_ops.schemas import CORPUS, STS
from stages.ingest import main


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with params.yaml and a tiny data root: one STS source, one corpus."""
    monkeypatch.delenv("SIMCSE_DATA_ROOT", raising=False)
    data = tmp_path / "data_root"
    (data / "sts").mkdir(parents=True)
    (data / "sts/STS.input.toy.txt").write_text(
        "A cat sits.\tA cat is sitting.\nA dog runs.\tA man sings.\nRain falls.\tIt rains.\n"
    )
    (data / "sts/STS.gs.toy.txt").write_text("4.8\n\n5\n")
    (data / "corpus").mkdir()
    (data / "corpus/a.txt").write_text("One sentence here.\nAnother sentence here.\nCut mid-sen")
    proj = tmp_path / "proj"
    proj.mkdir()
    params = {
        "data": {"root": "../data_root"},
        "ingest": {"max_bad_fraction": 0.0},
        "sources": {
            "toy_sts": {"format": "semeval_sts", "role": "eval-sts", "paths": ["sts/STS.input.toy.txt"]},
            "toy_lines": {"format": "lines", "role": "train-unsup", "paths": ["corpus/*.txt"],
                          "options": {"drop_unterminated_last_line": True}},
        },
        "evaluate": {"tasks": {}},
        "variants": {},
    }
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(proj)
    return proj


def run(*extra: str) -> dict:
    return main(["--params", "params.yaml", "--out", "data/ingested", "--metrics",
                 "metrics/ingest.json", *extra])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_ingest_writes_parquet_and_metrics(project):
    run()
    out = project / "data/ingested"
    assert sorted(p.name for p in out.iterdir()) == ["toy_lines.parquet", "toy_sts.parquet"]
    sts = pq.read_table(out / "toy_sts.parquet")
    assert sts.schema.equals(STS, check_metadata=False)
    assert sts.column("line").to_pylist() == [1, 3]
    lines = pq.read_table(out / "toy_lines.parquet")
    assert lines.schema.equals(CORPUS, check_metadata=False)
    assert lines.column("text").to_pylist() == ["One sentence here.", "Another sentence here."]
    metrics = json.loads((project / "metrics/ingest.json").read_text())
    assert metrics["total_rows"] == 4
    assert metrics["sources"]["toy_sts"]["rows"] == 2
    assert metrics["sources"]["toy_sts"]["unscored"] == 1
    assert metrics["sources"]["toy_sts"]["subsets"] == {"toy": 2}
    assert metrics["sources"]["toy_lines"]["unterminated_last_line_dropped"] == 1
    # nothing but the outputs is left beside them
    assert sorted(p.name for p in (project / "data").iterdir()) == ["ingested"]


def test_failed_ingest_leaves_previous_output_intact(project):
    run()
    out = project / "data/ingested"
    before = snapshot(out)
    metrics_before = (project / "metrics/ingest.json").read_text()
    # break the LAST source so that the first one would already have been read
    (project.parent / "data_root/corpus/b.txt").write_bytes(b"Fine line.\nBad \xff byte.\n")
    with pytest.raises(DataError, match=r"b\.txt:2: found invalid UTF-8"):
        run()
    assert snapshot(out) == before
    assert (project / "metrics/ingest.json").read_text() == metrics_before
    assert sorted(p.name for p in (project / "data").iterdir()) == ["ingested"]
    assert sorted(p.name for p in (project / "metrics").iterdir()) == ["ingest.json"]


def test_failed_first_ingest_writes_nothing(project):
    (project.parent / "data_root/sts/STS.gs.toy.txt").write_text("4.8\n9\n5\n")
    with pytest.raises(DataError, match=r"STS\.gs\.toy\.txt:2: found score '9' out of range"):
        run()
    assert not (project / "data").exists() or not any((project / "data").rglob("*.parquet"))
    assert not (project / "metrics/ingest.json").exists()


def test_failure_while_writing_leaves_no_partial_folder(project, monkeypatch):
    """A write error half-way (disk full) must not leave a half-written output folder."""
    run()
    out = project / "data/ingested"
    before = snapshot(out)
    import pyarrow.parquet as pq_mod

    real_write = pq_mod.write_table
    calls = []

    def failing_write(table, where, *a, **k):
        calls.append(where)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(table, where, *a, **k)

    monkeypatch.setattr(pq_mod, "write_table", failing_write)
    with pytest.raises(OSError, match="No space left"):
        run()
    assert len(calls) == 2
    assert snapshot(out) == before
    assert sorted(p.name for p in (project / "data").iterdir()) == ["ingested"]


def test_only_rereads_some_sources_and_keeps_the_others(project):
    run()
    out = project / "data/ingested"
    old_lines = (out / "toy_lines.parquet").read_bytes()
    (project.parent / "data_root/sts/STS.gs.toy.txt").write_text("4.8\n1.5\n5\n")
    run("--only", "toy_sts")
    assert pq.read_table(out / "toy_sts.parquet").num_rows == 3
    assert (out / "toy_lines.parquet").read_bytes() == old_lines
    metrics = json.loads((project / "metrics/ingest.json").read_text())
    assert metrics["sources"]["toy_sts"]["rows"] == 3
    assert metrics["sources"]["toy_lines"]["rows"] == 2
    assert metrics["total_rows"] == 5


def test_only_unknown_source(project):
    with pytest.raises(ConfigError, match=r"--only nope: no such source"):
        run("--only", "nope")


def test_real_sts13_through_the_stage(tmp_path, monkeypatch, params, data_root):
    """The stage on one real source, with the data root given by $SIMCSE_DATA_ROOT."""
    raw = yaml.safe_load(Path(params.path).read_text())
    raw["sources"] = {"sts13": raw["sources"]["sts13"]}
    raw["evaluate"]["tasks"] = {"sts13": {"source": "sts13"}}
    raw["evaluate"]["dev_task"] = {"source": "sts13"}
    raw["evaluate"]["domain_tasks"] = {}
    raw["variants"] = {}
    for key in [k for k in raw if k not in ("data", "sources", "ingest", "evaluate", "variants")]:
        del raw[key]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("SIMCSE_DATA_ROOT", str(data_root))
    monkeypatch.chdir(tmp_path)
    metrics = run()
    assert metrics["sources"]["sts13"]["rows"] == 1500
    assert pq.read_table(tmp_path / "data/ingested/sts13.parquet").num_rows == 1500


def test_bad_records_within_budget_are_reported(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest"]["max_bad_fraction"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project.parent / "data_root/sts/STS.gs.toy.txt").write_text("4.8\n\nabc\n")
    metrics = run()
    sts = metrics["sources"]["toy_sts"]
    assert (sts["rows"], sts["bad_records"], sts["unscored"]) == (1, 1, 1)
    assert "STS.gs.toy.txt:3: found score 'abc'" in sts["bad_examples"][0]
    assert metrics["bad_records"] == 1
