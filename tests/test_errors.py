"""User-facing errors end without a traceback: a stage, a flow or `simcse-ops` given a bad
params.yaml, a malformed data file or a missing input prints `<prog>: error: <file:line or key> ...`
as its last stderr line and exits with the error's status (2 ConfigError, 3 DataError or
MissingInputError, 1 RegistryError, 4 TrackingUnavailable, 5 TeamError); any other exception keeps
its traceback and exits 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simcse_ops import errors
from simcse_ops.cli import main as cli_main
from simcse_ops.dvc_runner import DvcError
from simcse_ops.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_REFUSED,
    EXIT_STORE,
    EXIT_TEAM,
    ConfigError,
    DataError,
    MissingInputError,
    RegistryError,
    UserError,
    run_main,
)
from simcse_ops.team import TeamError
from simcse_ops.tracking import TrackingUnavailable

ROOT = Path(__file__).resolve().parents[1]

PARAMS = """\
data: {root: data_root}
ingest: {max_bad_fraction: 0.0}
sources:
  toy_sts: {format: semeval_sts, role: eval-sts, paths: [sts/STS.input.toy.txt]}
evaluate: {tasks: {}}
variants: {}
"""


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """params.yaml and a one-source data root (an STS file pair of two lines) in tmp_path."""
    monkeypatch.delenv("SIMCSE_DATA_ROOT", raising=False)
    sts = tmp_path / "data_root/sts"
    sts.mkdir(parents=True)
    (sts / "STS.input.toy.txt").write_text("A cat sits.\tA cat is sitting.\nA dog runs.\tA man sings.\n")
    (sts / "STS.gs.toy.txt").write_text("4.8\n1.0\n")
    (tmp_path / "params.yaml").write_text(PARAMS)
    return tmp_path


def ingest(project: Path) -> subprocess.CompletedProcess:
    """`python -m stages.ingest` as DVC runs it (from the project root), on the tmp project."""
    return subprocess.run(
        [sys.executable, "-m", "stages.ingest", "--params", str(project / "params.yaml"),
         "--out", str(project / "data/ingested"), "--metrics", str(project / "metrics/ingest.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_stage_config_error_exits_2_with_the_key_and_no_traceback(project):
    (project / "params.yaml").write_text(PARAMS.replace("max_bad_fraction", "max_bad_fracton"))
    r = ingest(project)
    assert r.returncode == EXIT_CONFIG == 2, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    last = last_line(r.stderr)
    assert last.startswith("ingest: error: "), last
    assert str(project / "params.yaml") in last, last
    assert "ingest: unknown key(s) 'max_bad_fracton'" in last, last
    assert "allowed: max_bad_fraction" in last, last
    assert not (project / "data").exists()


def test_stage_invalid_yaml_is_a_config_error_on_one_line(project):
    (project / "params.yaml").write_text("data: [\n  root: x\n")
    r = ingest(project)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = last_line(r.stderr)
    assert last.startswith("ingest: error: ") and "not valid YAML" in last and "line 3" in last, last


def test_stage_data_error_exits_3_with_file_and_line_and_no_traceback(project):
    (project / "data_root/sts/STS.gs.toy.txt").write_text("4.8\n9\n")  # line 2: out of range
    r = ingest(project)
    assert r.returncode == EXIT_DATA == 3, r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    last = last_line(r.stderr)
    assert last.startswith("ingest: error: "), last
    assert f"{project / 'data_root/sts/STS.gs.toy.txt'}:2: found score '9' out of range" in last, last
    assert "expected" in last, last


def test_unexpected_exception_keeps_its_traceback_and_exits_1(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""\
        from simcse_ops.errors import run_main

        def main(argv=None):
            raise RuntimeError("a bug, not a user error")

        raise SystemExit(run_main(main))
        """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert last_line(r.stderr) == "RuntimeError: a bug, not a user error"


# --------------------------------------------------------------------------------------------
# run_main in process


def raiser(exc: BaseException):
    def main(argv=None):
        raise exc

    return main


class MyDataError(DataError):
    pass


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConfigError("params.yaml: dedup.thresold: unknown key"), EXIT_CONFIG),
        (DataError("a.tsv", 7, "3 columns", "4 columns", "re-export the file"), EXIT_DATA),
        (MyDataError("a.tsv", None, "nothing", "rows"), EXIT_DATA),
        (MissingInputError("data/ingested/stsb.parquet: not found; run the ingest stage first"), EXIT_DATA),
        (RegistryError("simcse-x v2 is already the champion"), EXIT_REFUSED),
        (TrackingUnavailable("MLflow store http://127.0.0.1:1 unreachable"), EXIT_STORE),
        (TeamError("mlflow server did not answer http://127.0.0.1:5000 within 60 s"), EXIT_TEAM),
        (DvcError(["repro", "ingest"], 1, Path("/w"), ["ingest: error: bad", "ERROR: failed"]), EXIT_REFUSED),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ],
    ids=["config", "data", "data-subclass", "missing-input", "registry", "store", "team", "dvc", "interrupt"],
)
def test_run_main_user_errors(exc, status, capsys):
    assert run_main(raiser(exc), [], prog="toy") == status
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    if status == EXIT_INTERRUPTED:
        assert err == "toy: interrupted\n"
    else:
        assert err == f"toy: error: {errors.one_line(exc)}\n"


def test_statuses_are_distinct_where_documented():
    """A team failure is not a config error (params.yaml may be right, the machine wrong); a missing
    input is not a bug; the store has its own status."""
    assert not issubclass(TeamError, ConfigError)
    assert issubclass(MissingInputError, FileNotFoundError)  # code that expects one still catches it
    assert {EXIT_CONFIG, EXIT_DATA, EXIT_STORE, EXIT_TEAM, EXIT_INTERRUPTED} == {2, 3, 4, 5, 130}
    for cls in (ConfigError, DataError, MissingInputError, RegistryError, TrackingUnavailable, TeamError, DvcError):
        assert issubclass(cls, UserError), cls


def test_data_error_message():
    e = DataError("a.tsv", 7, "3 columns", "4 columns", "re-export the file")
    assert str(e) == "a.tsv:7: found 3 columns; expected 4 columns. Fix: re-export the file"
    assert (e.path, e.line, e.found, e.expected) == ("a.tsv", 7, "3 columns", "4 columns")
    assert isinstance(e, ValueError)


def test_files_reexports_data_error():
    from simcse_ops import files

    assert files.DataError is errors.DataError


def test_config_error_of_config_py_is_handled(capsys):
    """config.py re-exports the one ConfigError class; it exits 2."""
    from simcse_ops import config

    assert config.ConfigError is ConfigError
    assert run_main(raiser(config.ConfigError("params.yaml: x: bad")), [], prog="toy") == EXIT_CONFIG
    assert capsys.readouterr().err == "toy: error: params.yaml: x: bad\n"


@pytest.mark.parametrize("exc", [RuntimeError("bug"), ValueError("not a user error"), OSError(28, "full")])
def test_run_main_lets_other_exceptions_propagate(exc, capsys):
    with pytest.raises(type(exc)):
        run_main(raiser(exc), [], prog="toy")
    assert capsys.readouterr().err == ""


def test_run_main_status_and_argv():
    seen = []
    assert run_main(lambda argv=None: seen.append(argv) or {"rows": 1}, ["--x"]) == 0
    assert run_main(lambda: 4) == 4
    assert seen == [["--x"]]
    with pytest.raises(SystemExit) as e:  # argparse usage errors pass through untouched
        run_main(lambda argv: (_ for _ in ()).throw(SystemExit(2)), [])
    assert e.value.code == 2


def test_stage_name_includes_the_variant(capsys):
    def main(argv=None):
        raise ConfigError("bad")

    main.__module__ = "stages.train"
    assert run_main(main, ["--variant", "sup-nli", "--out", "x"]) == EXIT_CONFIG
    assert capsys.readouterr().err == "train@sup-nli: error: bad\n"


def test_validation_failure_is_a_data_error(capsys):
    """A failed critical expectation is the data's fault: exit 3, its findings on the last line."""
    from simcse_ops.expectations import ValidationFailed

    failure = {"suite": "corpus", "batch": "wiki1m", "path": "data/clean/wiki1m.parquet", "check": "unique", "column": "_key",
               "expectation": "expect_column_values_to_be_unique", "observed": "3 duplicates",
               "expected": "unique", "severity": "critical"}
    assert run_main(raiser(ValidationFailed([failure])), [], prog="validate") == EXIT_DATA
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("validate: error: validate: 1 critical expectation(s) failed")


# --------------------------------------------------------------------------------------------
# Every entry point: a stage, `simcse-ops`, a flow's main


def only_line(r: subprocess.CompletedProcess) -> str:
    """The one error line a failed entry point printed, last on stderr, with no traceback (the
    stage's own log lines, such as `INFO ... 7 STS tasks with torch`, may come before it)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors_ = [line for line in lines if ": error: " in line]
    assert len(errors_) == 1 and lines[-1] == errors_[0], r.stderr
    return lines[-1]


def test_stage_missing_input_exits_3_naming_the_stage_that_makes_it(tmp_path):
    """python -m stages.evaluate with a --data folder that does not exist: one line, exit 3."""
    r = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", "--variant", "sup-nli", "--params", str(ROOT / "params.yaml"),
         "--data", str(tmp_path / "none"), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == EXIT_DATA, r.stderr
    line = only_line(r)
    assert line.startswith(f"evaluate@sup-nli: error: {tmp_path / 'none'}/"), line
    assert line.endswith(".parquet: not found; run the ingest stage first (dvc repro ingest)"), line
    assert not (tmp_path / "out").exists()


def test_cli_missing_input_exits_3_on_one_line(tmp_path, capsys):
    missing = tmp_path / "pairs.tsv"
    assert cli_main(["sts", "--model", str(tmp_path / "model"), "--pairs", str(missing)]) == EXIT_DATA
    assert capsys.readouterr().err == f"simcse-ops sts: error: {missing}: no such pairs file\n"


def test_cli_bad_config_exits_2_on_one_line(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(PARAMS.replace("max_bad_fraction", "max_bad_fracton"))
    assert cli_main(["history", "sup-nli", "--params", str(tmp_path / "params.yaml")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simcse-ops history: error: "), err
    assert "ingest: unknown key(s) 'max_bad_fracton'" in err, err


def test_cli_team_start_failure_has_its_own_status(project_root, monkeypatch, capsys):
    """`simcse-ops team up` without the database password: a TeamError, exit 5, not a config error."""
    from simcse_ops.config import load_params

    monkeypatch.delenv(load_params(project_root / "params.yaml").team.password_env, raising=False)
    assert cli_main(["team", "up", "--params", str(project_root / "params.yaml")]) == EXIT_TEAM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simcse-ops team: error: $"), err
    assert "is not set: export" in err, err


def test_cli_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    from simcse_ops import cli

    def boom(args):
        raise RuntimeError("a bug in a command")

    monkeypatch.setattr(cli, "sts_cmd", boom)
    with pytest.raises(RuntimeError, match="a bug in a command"):  # Python prints it, exit 1
        cli_main(["sts", "--model", "m", "--pairs", "p"])


def test_flow_main_missing_workspace_exits_3_before_prefect_starts(tmp_path):
    """python -m flows.retrain on a folder that is not the project: one line, exit 3, and no
    Prefect server is started for it."""
    r = subprocess.run([sys.executable, "-m", "flows.retrain", "biomed", "--workspace", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_DATA, r.stderr
    line = only_line(r)
    assert line == (f"retrain: error: {tmp_path.resolve()}: not a DVC repository (no .dvc folder); run `dvc init` "
                    f"or pass the project's folder"), line


def test_flow_main_bad_config_exits_2(tmp_path, capsys):
    from flows import pipeline

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(PARAMS)
    assert run_main(pipeline.main, ["--workspace", str(tmp_path), "--variant", "nope"], prog="pipeline") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pipeline: error: ") and "'nope'" in err, err
