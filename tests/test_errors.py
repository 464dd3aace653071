"""User-facing errors end without a traceback: a stage given a bad params.yaml or a malformed data
file prints `<stage>: error: <file:line or key> ...` as its last stderr line and exits 2
(ConfigError) or 3 (DataError); any other exception keeps its traceback and exits 1."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simcse_ops import errors
from simcse_ops.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    ConfigError,
    DataError,
    run_main,
)

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
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ],
)
def test_run_main_user_errors(exc, status, capsys):
    assert run_main(raiser(exc), [], prog="toy") == status
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    if status == EXIT_INTERRUPTED:
        assert err == "toy: interrupted\n"
    else:
        assert err == f"toy: error: {exc}\n"


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
