"""`flows.pipeline`: stage order, DVC output in task logs, failures, retries and artifacts
(the plan: tests/test_dvc_runner.py; the artifacts' contents: tests/test_flow_artifacts.py).

Real DVC and a real (temporary) Prefect server; the stages are stand-ins (tests/flows/fake_project.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from flows.pipeline import pipeline, publish_artifacts
from simcse_ops.config import ConfigError, load_params
from simcse_ops.dvc_runner import DvcError, default_remote, stage_output
from simcse_ops.flow_artifacts import registry_file, report_page
from tests.flows.conftest import flow_run_logs, read_artifact
from tests.flows.fake_project import DOMAIN_TASK, TASKS, calls, make_fake_project
from tests.registry_support import tracking_env


def mlflow_artifact(project, run_id: str, path: str) -> str:
    """The text of artifact `path` of run `run_id` in the project's embedded MLflow store."""
    import mlflow

    with tracking_env(f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"):
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
        with open(local, encoding="utf-8") as f:
            return f.read()


@pytest.fixture()
def project(tmp_path):
    return make_fake_project(tmp_path / "proj", retries=1)


@pytest.mark.slow
def test_pipeline_runs_every_stage_in_order_and_publishes_artifacts(prefect_server, project):
    state = pipeline(variants=["base", "biomed"], workspace=str(project), return_state=True)
    assert state.is_completed(), state
    statuses = state.result()
    # biomed is a domain variant: its evaluate stage scores its references, base and the general
    # variant wiki (register.domain.references by default), so wiki is trained first, nothing more
    assert list(statuses) == [
        "ingest", "dedup", "validate",
        "train@base", "evaluate@base", "bias@base", "register@base",
        "train@wiki", "train@biomed", "evaluate@biomed", "bias@biomed", "register@biomed",
    ]
    assert set(statuses.values()) == {"ran"}
    assert calls(project) == list(statuses)  # DVC ran each one, in this order
    assert not {"evaluate@wiki", "register@wiki"} & set(calls(project))
    # The stages know the pipeline run they belong to (validate names its GX run after it).
    with get_client(sync_client=True) as client:
        run_name = client.read_flow_run(state.state_details.flow_run_id).name
    assert json.loads(stage_output(project, "validate", "validate.json").read_text())["run_name"] == run_name

    logs = flow_run_logs(state.state_details.flow_run_id)
    assert "fake train running for biomed" in logs           # the stage's stdout
    assert "[stderr] fake train: a warning on stderr" in logs  # and its stderr
    assert any("Running stage 'evaluate@biomed'" in m for m in logs)  # DVC's own output

    table = read_artifact("pipeline-sts")
    assert table is not None and table.type == "table"
    rows = json.loads(table.data)
    assert [r["variant"] for r in rows] == ["base", "biomed"]
    assert set(rows[0]) == {"variant", *TASKS, "avg"}
    assert table.description.endswith("from results/base/sts.json, results/biomed/sts.json")
    decision = read_artifact("registry-biomed")
    assert decision.type == "markdown"
    assert "simcse-biomed version 1: promote (promoted to champion)" in decision.data
    registered = json.loads(registry_file(project, "biomed").read_text())
    assert (f"(http://mlflow.test:5000/#/experiments/{registered['experiment_id']}/runs/{registered['run_id']})"
            in decision.data)
    # The dvc.lock the run produced is an artifact of each registered version's MLflow run.
    for v in ("base", "biomed"):
        run_id = json.loads(registry_file(project, v).read_text())["run_id"]
        kept = mlflow_artifact(project, run_id, "dvc/dvc.lock")
        assert kept == (project / "dvc.lock").read_text()
        assert f"{v}: dvc.lock kept as artifact dvc/dvc.lock of run {run_id}" in " ".join(logs)
    assert decision.description == "registry decision for biomed (results/biomed/registry.json)"
    # The domain table: evaluate@biomed's domain.json beside the champion from registry.json.
    domain = read_artifact("pipeline-biomed-domain")
    assert json.loads(domain.data) == [{
        "task": f"{DOMAIN_TASK} (primary)", "metric": "ndcg@10", "n": 1, "bm25": "40.00 [39.00, 41.00]",
        "base": "45.00 [44.00, 46.00]", "champion": "48.25", "challenger": "51.00 [50.00, 52.00]"}]
    assert "(results/biomed/domain.json, results/biomed/registry.json)" in domain.description
    assert read_artifact("pipeline-base-domain") is None  # base has no domain tasks: no table

    # A second run finds everything up to date: DVC skips, nothing is re-run.
    again = pipeline(variants=["biomed"], workspace=str(project))
    assert set(again.values()) == {"up to date"}
    assert len(calls(project)) == len(statuses)


@pytest.mark.slow
def test_a_failed_stage_is_retried_then_fails_the_flow_with_dvc_stderr(prefect_server, project,
                                                                      monkeypatch):
    monkeypatch.setenv("FAKE_STAGE_FAIL", "validate")
    state = pipeline(variants=["biomed"], workspace=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(DvcError) as err:
        state.result()
    assert "`dvc repro --single-item validate` failed" in str(err.value)
    assert "ValueError: validate exploded on purpose" in str(err.value)
    # flows.retries = 1: two attempts, and nothing downstream ran.
    assert calls(project) == ["ingest", "dedup", "validate", "validate"]


def test_unknown_variant_fails_before_any_stage(prefect_server, project):
    with pytest.raises(ConfigError, match="no variant 'nope'; known: base, biomed, wiki"):
        pipeline(variants=["nope"], workspace=str(project))
    assert calls(project) == []


def test_a_link_artifact_points_to_the_run_report(prefect_server, project):
    """Where dvc.yaml puts the `report` stage's folder; published once the page exists."""
    assert report_page(project) is None  # the stand-in project has no report stage (yet)
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text() + "  report:\n    cmd: python fake_stage.py report\n"
                                               "    outs: [pages/run-report]\n")
    page = report_page(project)
    assert page == project / "pages" / "run-report" / "index.html"
    params = load_params(project / "params.yaml")

    @flow
    def publish():
        publish_artifacts(project, params, ["biomed"], params.flows, key_prefix="t")

    publish()
    assert read_artifact("t-report") is None  # not written yet: no link
    page.parent.mkdir(parents=True)
    page.write_text("<html></html>")
    publish()
    link = read_artifact("t-report")
    assert link is not None and page.resolve().as_uri() in link.data
    assert "Run report (pages/run-report/index.html)" in link.data


@pytest.mark.slow
def test_a_second_workspace_restores_every_stage_from_the_dvc_remote(prefect_server, project, tmp_path):
    """Team mode's sharing (simcse_ops.team): two clones of one repository with one DVC remote.
    The first runs the stages and pushes (run cache included); the second pulls and DVC restores
    the stages with cached outputs from the run cache instead of running them."""
    def git(*args, cwd):
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)

    git("add", "-A", cwd=project)
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fake", cwd=project)
    other = tmp_path / "other"
    git("clone", "-q", str(project), str(other), cwd=tmp_path)
    remote = tmp_path / "remote"
    for ws in (project, other):
        assert default_remote(ws) is None
        subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "--local", "--default", "team", str(remote)],
                       cwd=ws, check=True, capture_output=True)
        assert default_remote(ws) == "team"

    first = pipeline(variants=["biomed"], workspace=str(project), return_state=True)
    assert first.is_completed(), first
    assert set(first.result().values()) == {"ran"}
    assert (remote / "runs").is_dir()  # the run cache was pushed
    second = pipeline(variants=["biomed"], workspace=str(other), return_state=True)
    assert second.is_completed(), second
    statuses = second.result()
    assert list(statuses) == list(first.result())
    # Stages with cached outputs come from the remote; a stage whose outputs are all `cache: false`
    # metrics runs again: DVC restores such files only where git holds them (the real project
    # commits metrics/ and dvc.lock; this clone's commit has neither).
    restored = ["ingest", "dedup", "train@base", "train@wiki", "train@biomed"]  # wiki: biomed's reference
    assert {t: s for t, s in statuses.items() if s == "restored"} == dict.fromkeys(restored, "restored"), statuses
    assert calls(other) == [t for t in statuses if t not in restored]
    for out in ("data/clean", "models/base", "models/biomed"):  # the first workspace's outputs
        for f in (project / out).rglob("*"):
            assert (other / out / f.relative_to(project / out)).read_bytes() == f.read_bytes()
    logs = flow_run_logs(second.state_details.flow_run_id)
    assert "DVC remote 'team': pull before, push after" in logs
    assert any(m.startswith("dvc push: done") for m in logs)
