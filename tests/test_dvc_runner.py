"""`simcse_ops.dvc_runner`: real `dvc` processes in a temporary repository."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from simcse_ops.config import ConfigError
from simcse_ops.dvc_runner import (
    DvcError,
    StageFiles,
    load_stage_files,
    parse_dag_dot,
    plan_stages,
    run_dvc,
    stage_files,
    stage_graph,
    stage_output,
    workspace_lock,
)
from simcse_ops.run_name import RUN_NAME_ENV
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


# --------------------------------------------------------------------------------------------
# stage_files: the files a stage declares, as DVC resolves dvc.yaml


@pytest.fixture(scope="module")
def real_stages(project_root):
    """Every stage of the project's own dvc.yaml (one DVC load)."""
    return load_stage_files(project_root)


def test_stage_files_of_the_real_dvc_yaml(project_root, params, real_stages):
    base = params.register.base_variant
    register = stage_files(project_root, "register@biomed")
    assert register == real_stages["register@biomed"]
    assert register.metrics == ("metrics/biomed/registry.json",)
    assert register.outs == () and register.plots == ()
    # foreach expansion and ${register.base_variant} from params.yaml, resolved by DVC
    assert {"models/biomed", "metrics/biomed/sts.json", f"metrics/{base}/sts.json",
            f"metrics/{base}/bias.json"} <= set(register.deps)
    assert "params.yaml" not in register.deps  # `params:` are not file dependencies
    evaluate = real_stages["evaluate@sup-nli"]
    assert f"models/{base}" in evaluate.deps
    assert evaluate.outs == ("metrics/sup-nli/domain_items.json", "metrics/sup-nli/timing.json")
    # the encode times change on every run: no register stage may read them (issue 24)
    assert not [d for name, st in real_stages.items() if name.startswith("register@")
                for d in st.deps if d.endswith("timing.json")]
    assert evaluate.metrics == ("metrics/sup-nli/sts.json", "metrics/sup-nli/domain.json")
    assert evaluate.plots == ("metrics/sup-nli/sts_tasks.csv", "metrics/sup-nli/domain_tasks.csv")
    assert "metrics/biomed/train/loss.csv" in real_stages["train@biomed"].plots
    # ${data.root}: relative to the workspace, wherever it points
    data_root = (project_root / params.data.root).resolve()
    assert Path(project_root / real_stages["ingest"].deps[-1]).resolve().parent == data_root


def test_every_file_the_flows_read_is_declared_in_the_real_dvc_yaml(project_root, params, real_stages):
    for v in params.variants:
        assert real_stages[f"evaluate@{v}"].output("sts.json") == project_root / f"metrics/{v}/sts.json"
        assert real_stages[f"evaluate@{v}"].output("domain.json").name == "domain.json"
        registry = real_stages[f"register@{v}"].output("registry.json")
        assert registry == project_root / f"metrics/{v}/registry.json"
    assert stage_output(project_root, "train@biomed", "train/train.json") == (
        project_root / "metrics/biomed/train/train.json")


def test_a_missing_stage_or_output_names_dvc_yaml_and_the_stage(project_root, real_stages):
    with pytest.raises(ConfigError, match=r"dvc\.yaml: stage 'register@biomed' declares no output named "
                                          r"'sts\.json' \(its outs, metrics and plots: "
                                          r"metrics/biomed/registry\.json\)"):
        real_stages["register@biomed"].output("sts.json")
    with pytest.raises(ConfigError, match=r"dvc\.yaml: no stage 'register@legal' \(stages: ingest, "):
        stage_files(project_root, "register@legal")
    with pytest.raises(ConfigError, match="no stage 'register'"):  # a foreach group is not one stage
        stage_files(project_root, "register")


def test_an_ambiguous_output_name_is_an_error(tmp_path):
    files = StageFiles("s", tmp_path, deps=(), outs=("a/x.json",), metrics=("b/x.json",), plots=())
    with pytest.raises(ConfigError,
                       match=r"stage 's' declares 2 outputs \(a/x\.json, b/x\.json\) named 'x\.json'"):
        files.output("x.json")
    assert files.output("b/x.json") == tmp_path / "b/x.json"
    assert files.outputs == ("a/x.json", "b/x.json")


def test_stage_files_of_the_fake_project(project):
    ingest = stage_files(project, "ingest")
    assert ingest.deps == ("fake_stage.py", "raw/domain") and ingest.outs == ("data/ingested",)
    with pytest.raises(FileNotFoundError, match="not a DVC repository"):
        stage_files(project / "raw", "ingest")


def test_run_name_reaches_the_stage_command(tmp_path):
    """A flow passes its run's name; the stage command sees it as $SIMCSE_OPS_RUN_NAME."""
    proj = tmp_path / "named"
    proj.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=proj, check=True)
    cmd = f"{sys.executable} -c \"import os; open('name.txt', 'w').write(os.environ['{RUN_NAME_ENV}'])\""
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"named": {"cmd": cmd, "outs": ["name.txt"]}}}))
    run_dvc(["repro", "--single-item", "named"], proj, run_name="brave-otter")
    assert (proj / "name.txt").read_text() == "brave-otter"


def test_model_edges_state_what_dvc_yaml_cannot(params):
    """A domain variant's evaluate stage scores its references; a variant started from another
    variant's model trains after it. dvc.yaml cannot interpolate those per-variant lists."""
    import dataclasses

    from simcse_ops.dvc_runner import model_edges

    assert model_edges(params)["evaluate@biomed"] == {"train@base", "train@unsup-wiki", "train@sup-nli"}
    v = dataclasses.replace(params.variants["biomed"], base_model="models/unsup-wiki")
    p = dataclasses.replace(params, variants={**params.variants, "biomed": v})
    assert model_edges(p)["train@biomed"] == {"train@unsup-wiki"}
    v = dataclasses.replace(params.variants["biomed"], base_model="default")
    p = dataclasses.replace(params, variants={**params.variants, "biomed": v})
    assert "train@biomed" not in model_edges(p) and "evaluate@unsup-wiki" not in model_edges(p)


# --------------------------------------------------------------------------------------------
# plan_stages: the targets a flow runs, in order


def chain_graph(*variants: str) -> dict[str, set[str]]:
    """The shape of the project's DAG: register@V also needs evaluate@base (the reference); the
    ONNX export feeds evaluate@V (backend parity) and register@V (the pyfunc's artifact)."""
    g = {"ingest": set(), "dedup": {"ingest"}, "validate": {"dedup", "ingest"}}
    for v in variants:
        g[f"train@{v}"] = {"dedup", "validate"}
        g[f"export@{v}"] = {f"train@{v}"}
        g[f"evaluate@{v}"] = {"ingest", f"train@{v}", f"export@{v}"}
        g[f"bias@{v}"] = {"ingest", f"train@{v}"}
        g[f"register@{v}"] = {f"train@{v}", f"export@{v}", f"evaluate@{v}", f"bias@{v}", "evaluate@base"}
    return g


def test_plan_runs_shared_stages_then_variant_by_variant():
    g = chain_graph("base", "a")
    assert plan_stages(g, ["base", "a"], ["base", "a"]) == [
        "ingest", "dedup", "validate",
        "train@base", "export@base", "evaluate@base", "bias@base", "register@base",
        "train@a", "export@a", "evaluate@a", "bias@a", "register@a",
    ]


def test_plan_adds_what_dvc_says_is_upstream():
    g = chain_graph("base", "a", "b")
    assert plan_stages(g, ["b"], ["base", "a", "b"]) == [
        "ingest", "dedup", "validate",
        "train@base", "export@base", "evaluate@base",  # register@b compares with base
        "train@b", "export@b", "evaluate@b", "bias@b", "register@b",
    ]
    del g["register@a"]  # a foreach over a subset of the variants: a's chain is shorter
    assert plan_stages(g, ["a"], ["base", "a", "b"])[-4:] == ["train@a", "export@a", "evaluate@a", "bias@a"]


def test_the_report_runs_last_without_pulling_in_other_variants():
    g = chain_graph("base", "a", "b")
    g["report"] = {f"{s}@{v}" for v in ("base", "a", "b") for s in ("train", "evaluate", "bias", "register")}
    plan = plan_stages(g, ["b"], ["base", "a", "b"])
    assert plan[-2:] == ["register@b", "report"]
    assert "register@a" not in plan and "register@base" not in plan


def test_plan_fails_on_a_missing_shared_stage_variant_or_a_cycle():
    g = chain_graph("a")
    del g["dedup"]
    with pytest.raises(ConfigError, match="no stage.*dedup"):
        plan_stages(g, ["a"])
    with pytest.raises(ConfigError, match="no stage for variant 'b'"):
        plan_stages(chain_graph("a"), ["b"])
    g = chain_graph("base")
    g["ingest"] = {"register@base"}
    with pytest.raises(ConfigError, match="cycle"):
        plan_stages(g, ["base"])
