"""End to end: a real Prefect server, process work pool, deployments from flows/prefect.yaml and a
worker retrain a domain variant of a tiny copy of the project through the real DVC stages, and the
new version lands in the MLflow registry. Then two runs triggered at once both complete, one after
the other, without a DVC lock error.

Everything runs in temporary folders: the Prefect server's SQLite database (PREFECT_HOME), the
project copy (git + DVC), its data root and its MLflow store (mlflow/mlflow.db in the copy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.prefect_support import RUN_TIMEOUT_S, Prefect, free_port, ts
from tests.integration.tiny_project import (
    PUBMED_ABSTRACTS,
    make_tiny_project,
    pubmedqa_abstracts,
    tiny_data_root,
    write_pubmedqa,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

POOL = "simcse-local"  # the pool flows/prefect.yaml deploys to
DVC_LOCK_ERRORS = ("Unable to acquire lock", "is busy, it is being blocked by")


@pytest.fixture(scope="module")
def prefect(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 (free port, temporary PREFECT_HOME, SQLite)."""
    base = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
        "PREFECT_HOME": str(base / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick up a queued run 2 s after the slot frees
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in [os.environ.get("PYTHONPATH")] if p),
    }
    if not env["PYTHONPATH"]:
        del env["PYTHONPATH"]
    p = Prefect(env, api, base)
    server = p.start("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)])
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prefect server did not start:\n{p.tail('server')}")
            time.sleep(1)
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root, data_root, tiny_model_dir):
    return make_tiny_project(project_root, tmp_path_factory.mktemp("e2e") / "proj", data_root,
                             tiny_model_dir)


def registry_versions(project: Path, name: str) -> list:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def champion_version(project: Path, name: str) -> int:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{project / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return int(client.get_model_version_by_alias(name, "champion").version)


def test_domain_retrain_through_server_worker_dvc_and_mlflow(prefect, project, data_root):
    # Work pool (one run at a time: one DVC workspace), deployments, worker.
    prefect.cli("work-pool", "create", POOL, "--type", "process")
    prefect.cli("work-pool", "set-concurrency-limit", POOL, "1")
    prefect.cli("deploy", "--no-prompt", "--all", "--prefect-file", "flows/prefect.yaml", cwd=project)
    listed = prefect.cli("deployment", "ls")
    assert "retrain-domain/biomed" in listed and "simcse-pipeline/all" in listed
    dep = prefect.get("/deployments/name/retrain-domain/biomed")
    assert dep["work_pool_name"] == POOL and dep["parameters"] == {"domain": "biomed"}
    (sched,) = dep["schedules"]
    assert sched["schedule"]["cron"] == "0 3 * * 1" and sched["schedule"]["timezone"] == "Europe/Berlin"
    assert sched["active"]
    # Pause it (as README "Operate" shows), so that a cron tick during the test adds no run.
    prefect.cli("deployment", "schedule", "pause", "retrain-domain/biomed", sched["id"])
    assert not prefect.get("/deployments/name/retrain-domain/biomed")["schedules"][0]["active"]
    worker = prefect.start("worker", ["worker", "start", "--pool", POOL], cwd=project)

    # 1. One retrain: DVC runs ingest ... register@biomed; a version appears in the registry.
    run_id = prefect.run_id(prefect.trigger("retrain-domain/biomed", project))
    run = prefect.wait(run_id)
    logs = prefect.flow_logs(run_id)
    assert run["state_type"] == "COMPLETED", "\n".join(logs[-60:]) + prefect.tail("worker")
    assert any("Running stage 'register@biomed'" in m for m in logs)
    assert any("Running stage 'ingest'" in m for m in logs)
    decision = json.loads((project / "metrics/biomed/registry.json").read_text())
    versions = registry_versions(project, "simcse-biomed")
    assert [int(v.version) for v in versions] == [decision["version"]] == [1]
    assert versions[0].run_id == decision["run_id"]
    said = "became champion" if decision["promoted"] else "did NOT become champion"
    assert any(f"new version 1 {said}" in m for m in logs), logs[-20:]
    if decision["promoted"]:
        assert champion_version(project, "simcse-biomed") == 1
    # a domain variant is gated on its primary domain task (paired bootstrap) first
    assert decision["reasons"][0].startswith(("ok: domain: mqp ap", "fail: domain: mqp ap")), decision["reasons"]
    assert (project / "metrics/base/domain.json").is_file() and (project / "metrics/biomed/domain.json").is_file()
    arts = prefect.artifacts_of(run_id)
    assert {"retrain-biomed-sts", "registry-biomed", "retrain-biomed-biomed-domain"} <= set(arts)
    table = arts["retrain-biomed-biomed-domain"]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert table[0]["task"] == "mqp (primary)" and table[0]["base"] and table[0]["challenger"]
    rows = arts["retrain-biomed-sts"]["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [r["variant"] for r in rows] == ["biomed", "base"]
    assert {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg"} <= set(rows[0])
    assert decision["run_id"] in arts["registry-biomed"]["data"]

    # 2. A new file in the domain's source folder, then two runs triggered at once: the pool's
    # limit holds the second until the first is done; the first re-ingests and registers version
    # 2, the second finds DVC up to date. Neither meets a DVC lock.
    write_pubmedqa(tiny_data_root(project) / "domain/biomedical/pubmedqa_pqal/ori_pqal_2.json",
                   pubmedqa_abstracts(data_root, PUBMED_ABSTRACTS, 4))  # 4 abstracts not seen yet
    triggers = [prefect.trigger("retrain-domain/biomed", project) for _ in range(2)]
    ids = [prefect.run_id(t) for t in triggers]
    runs = [prefect.wait(i, timeout_s=2 * RUN_TIMEOUT_S) for i in ids]
    all_logs = {i: prefect.flow_logs(i) for i in ids}
    for r in runs:
        assert r["state_type"] == "COMPLETED", "\n".join(all_logs[r["id"]][-60:])
    for i, msgs in all_logs.items():
        bad = [m for m in msgs if any(e in m for e in DVC_LOCK_ERRORS)]
        assert not bad, f"{i}: DVC lock error: {bad}"
    first, second = sorted(runs, key=lambda r: ts(r["start_time"]))
    assert ts(first["end_time"]) <= ts(second["start_time"]), (first, second)
    first_logs, second_logs = all_logs[first["id"]], all_logs[second["id"]]
    assert any("Running stage 'ingest'" in m for m in first_logs)
    assert not any("Running stage" in m for m in second_logs)  # DVC: nothing left to do
    assert any("nothing changed; version 2 stays" in m for m in second_logs), second_logs[-10:]
    assert [int(v.version) for v in registry_versions(project, "simcse-biomed")] == [1, 2]
    ingested = _ingested_files(project)
    assert any(f.endswith("ori_pqal_2.json") for f in ingested)
    assert worker.poll() is None, prefect.tail("worker")


def _ingested_files(project: Path) -> set[str]:
    import pandas as pd

    return set(pd.read_parquet(project / "data/ingested/pubmedqa.parquet")["file"].astype(str))


def test_serve_runs_the_deployments_without_a_work_pool(prefect, project):
    """`python -m flows.serve` registers the deployments of flows/prefect.yaml (with their
    schedules) and runs a triggered retrain in its own process; no pool, no worker."""
    for name in ("retrain-domain/biomed", "simcse-pipeline/all"):  # the pool's, if deployed before
        subprocess.run(["prefect", "deployment", "delete", name], env=prefect.env, capture_output=True)
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=project, env=prefect.env,
                             stdout=open(prefect.logs / "serve.log", "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    prefect.procs.append(serve)
    deadline = time.monotonic() + 120
    while True:  # serve registers the deployments, without a work pool
        try:
            dep = prefect.get("/deployments/name/retrain-domain/biomed")
            break
        except httpx.HTTPStatusError:
            pass
        assert serve.poll() is None and time.monotonic() < deadline, prefect.tail("serve")
        time.sleep(2)
    assert dep["work_pool_name"] is None
    (sched,) = dep["schedules"]
    assert (sched["schedule"]["cron"], sched["schedule"]["timezone"]) == ("0 3 * * 1", "Europe/Berlin")

    run_id = prefect.run_id(prefect.trigger("retrain-domain/biomed", project))
    run = prefect.wait(run_id)
    logs = prefect.flow_logs(run_id)
    assert run["state_type"] == "COMPLETED", "\n".join(logs[-40:]) + prefect.tail("serve")
    assert any(m.startswith("biomed: ") and ("new version" in m or "nothing changed" in m)
               for m in logs), logs[-10:]
