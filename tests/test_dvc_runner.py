"""`simcse_ops.dvc_runner`: real `dvc` processes in a temporary repository."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from simcse_ops.dvc_runner import DvcError, parse_dag_dot, run_dvc, stage_graph, workspace_lock
from tests.flows.fake_project import calls, make_fake_project


@pytest.fixture()
def project(tmp_path):
    return make_fake_project(tmp_path / "proj")


def test_run_dvc_streams_stdout_and_stderr_lines(project):
    seen = []
    res = run_dvc(["repro", "--single-item", "ingest"], project, on_line=lambda s, l: seen.append((s, l)))
    assert res.returncode == 0
    assert ("stdout", "fake ingest running for all") in seen
    assert ("stderr", "fake ingest: a warning on stderr") in seen
    assert "Running stage 'ingest'" in res.stdout
    assert calls(project) == ["ingest"]
    # DVC, not the runner, decides that a stage is up to date.
    res = run_dvc(["repro", "--single-item", "ingest"], project)
    assert "didn't change, skipping" in res.stdout
    assert calls(project) == ["ingest"]


def test_failure_raises_with_the_tail_of_stderr(project, monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_FAIL", "ingest")
    with pytest.raises(DvcError) as err:
        run_dvc(["repro", "--single-item", "ingest"], project, tail_lines=4)
    e = err.value
    assert e.returncode != 0
    assert len(e.stderr_tail) <= 4
    msg = str(e)
    assert "`dvc repro --single-item ingest` failed" in msg
    assert "ERROR: failed to reproduce 'ingest'" in msg
    assert "ValueError: ingest exploded on purpose" in e.stderr_tail


def test_not_a_dvc_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DVC repository"):
        run_dvc(["status"], tmp_path)


def test_stage_graph_is_dvcs_dag(project):
    g = stage_graph(project)
    assert g["ingest"] == set()
    assert g["dedup"] == {"ingest"}
    assert g["register@biomed"] == {"train@biomed", "evaluate@biomed", "bias@biomed", "evaluate@base"}
    assert {"train@wiki", "register@base"} <= set(g)


def test_parse_dag_dot_keeps_isolated_stages():
    text = 'strict digraph {\n"a";\n"b";\n"c";\n"a" -> "b";\n}\n'
    assert parse_dag_dot(text) == {"a": set(), "b": {"a"}, "c": set()}


def test_workspace_lock_serialises_processes(project, tmp_path):
    """A second process waits for the lock, is told who holds it, and runs after the first."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from simcse_ops.dvc_runner import workspace_lock
        tag = sys.argv[1]
        with workspace_lock({str(project)!r}, on_wait=lambda m: print("WAIT", m, flush=True),
                            poll_s=0.1, holder=f"holder-{{tag}}"):
            print("START", tag, time.time(), flush=True)
            time.sleep(1.5)
            print("END", tag, time.time(), flush=True)
        """
    )
    a = subprocess.Popen([sys.executable, "-c", script, "a"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)
    b = subprocess.Popen([sys.executable, "-c", script, "b"], stdout=subprocess.PIPE, text=True)
    out_a, _ = a.communicate(timeout=30)
    out_b, _ = b.communicate(timeout=30)
    times = {}
    for line in (out_a + out_b).splitlines():
        if line.startswith(("START", "END")):
            kind, tag, t = line.split()
            times[kind, tag] = float(t)
    assert times["END", "a"] <= times["START", "b"], (out_a, out_b)
    assert "WAIT" in out_b and "holder-a" in out_b


def test_workspace_lock_timeout_names_the_holder(project):
    with workspace_lock(project, holder="flow run first"):
        with pytest.raises(TimeoutError, match="flow run first"):
            with workspace_lock(project, timeout_s=0.3, poll_s=0.1):
                pass
    with workspace_lock(project, timeout_s=0.3):  # released: taken at once
        pass
