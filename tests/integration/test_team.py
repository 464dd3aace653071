"""Team mode for real (`simcse-ops team up`, src/simcse_ops/team.py) on a tiny copy of the project:
PostgreSQL (Debian's server, password auth), `mlflow server` and the Prefect server on it, a process
pool of 2 workers, a DVC remote folder, a bare git repository each run clones into its own folder.

A person runs the base pipeline (its data pushed to the remote) and commits dvc.lock and the
metrics; then two domain retrains triggered at once through `prefect deployment run` overlap in
time, pull the shared stages' outputs from the remote instead of recomputing them (counted from
DVC's own words in their logs: "up to date", no "Running stage"), and both register a version with
the gate's decision in the shared registry, each with its commit and the run's dvc.lock. The
servers listen on 127.0.0.1 only, PostgreSQL refuses a wrong password, the MLflow server refuses
foreign Host and Origin headers, and the password appears in no produced file, log, deployment or
process command line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.team_support import DOMAINS, run_report, seed_base_run, team_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

# stages both retrains share, recorded in the committed dvc.lock: their outputs come from the remote
SHARED = ("ingest", "dedup", "validate", "train@base", "export@base", "evaluate@base", "bias@base")


@pytest.fixture(scope="module")
def stack(project_root, data_root, tiny_model_dir):
    with team_stack(project_root, data_root, tiny_model_dir) as s:
        yield s


def listening(port: int) -> set[str]:
    """Local addresses (hex, /proc/net/tcp*) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


def test_servers_are_local_and_need_the_password(stack):
    import psycopg

    for name, port in stack["ports"].items():
        assert listening(port) == {"0100007F"}, (name, listening(port))  # 127.0.0.1 and nothing else
    hba = (stack["home"] / "postgres/data/pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all(r[-1] == "scram-sha-256" for r in rules), rules  # no `trust`, no `peer`
    port = stack["ports"]["postgres_port"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=port, user="simcse", password="wrong", dbname="mlflow",
                        connect_timeout=10)
    with psycopg.connect(host="127.0.0.1", port=port, user="simcse", password=stack["password"],
                         dbname="postgres", connect_timeout=10) as conn:
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert {"mlflow", "prefect"} <= dbs
    # MLflow's server: a foreign Host header (DNS rebinding) and a foreign Origin are refused.
    url = f"{stack['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 403
    create = f"{stack['mlflow']}/api/2.0/mlflow/experiments/create"
    refused = httpx.post(create, json={"name": "cors"}, headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403
    pre = httpx.options(url, headers={"Origin": stack["mlflow"], "Access-Control-Request-Method": "POST"})
    assert pre.headers.get("access-control-allow-origin") == stack["mlflow"]


def test_two_domain_retrains_run_in_parallel_and_share_through_remote_and_registry(stack):
    from mlflow import MlflowClient

    prefect, project = stack["prefect"], stack["project"]
    dep = prefect.get("/deployments/name/retrain-domain/biomed")
    assert dep["work_pool_name"] == "simcse-team"
    assert dep["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == str(stack["home"] / "repo.git")
    for name in ("biomed", "medqa"):  # no cron tick during the test
        d = prefect.get(f"/deployments/name/retrain-domain/{name}")
        for s in d["schedules"]:
            prefect.cli("deployment", "schedule", "pause", f"retrain-domain/{name}", s["id"])

    # 1. A person runs the base pipeline and commits dvc.lock and the metrics (the data: remote).
    statuses = seed_base_run(stack)
    assert "ingest: ran" in statuses, statuses

    # 2. Two domain retrains at once, on the pool's two workers.
    triggers = [prefect.trigger(f"retrain-domain/{d}", project) for d in DOMAINS]
    ids = dict(zip(DOMAINS, (prefect.run_id(t) for t in triggers), strict=True))
    runs = {d: run_report(prefect, i) for d, i in ids.items()}
    for d, r in runs.items():
        assert r["run"]["state_type"] == "COMPLETED", (d, "\n".join(r["messages"][-60:]))
    a, b = runs.values()
    overlap = (min(a["end"], b["end"]) - max(a["start"], b["start"])).total_seconds()
    assert overlap > 0, {d: (r["start"], r["end"]) for d, r in runs.items()}
    print(f"parallel retrains: overlap {overlap:.0f} s, wall "
          f"{(max(a['end'], b['end']) - min(a['start'], b['start'])).total_seconds():.0f} s")
    workdirs = set()
    for d, r in runs.items():
        st = r["statuses"]
        # the shared stages' outputs were pulled from the remote (DVC: up to date), not recomputed
        assert {s: st[s] for s in SHARED} == dict.fromkeys(SHARED, "up to date"), (d, st)
        assert not any(f"Running stage '{s}'" in m for s in SHARED for m in r["messages"]), d
        assert any(re.match(r"\[dvc pull\] .*\d+ files? (fetched|added)", m) for m in r["messages"]), d
        assert st[f"train@{d}"] == "ran" and st[f"register@{d}"] == "ran", (d, st)
        assert any(m.startswith("dvc push: done") for m in r["messages"]), d
        (ws,) = {m.group(1) for m in map(re.compile(r"^workspace: (\S+)$").match, r["messages"]) if m}
        workdirs.add(ws)
    assert len(workdirs) == 2 and not any(str(project) in w for w in workdirs), workdirs  # a clone each

    # 3. Both versions are in the shared registry with the gate's decision, the commit they were
    # cloned at and the dvc.lock their run produced.
    head = subprocess.run(["git", "rev-parse", "refs/heads/main"], cwd=stack["home"] / "repo.git",
                          capture_output=True, text=True, check=True).stdout.strip()
    client = MlflowClient(tracking_uri=stack["mlflow"], registry_uri=stack["mlflow"])
    for d in DOMAINS:
        (mv,) = client.search_model_versions(f"name = 'simcse-{d}'")
        assert mv.tags["gate.decision"] in {"promote", "reject"} and mv.tags["gate.reasons"], mv.tags
        assert mv.tags["registry.state"] == "complete"
        run = client.get_run(mv.run_id)
        assert run.data.tags["git.commit"] == head
        with tempfile.TemporaryDirectory() as tmp:
            lock = yaml.safe_load(Path(client.download_artifacts(mv.run_id, "dvc/dvc.lock", tmp)).read_text())
        assert f"register@{d}" in lock["stages"] and "ingest" in lock["stages"]
        assert any(f"new version {mv.version}" in m for m in runs[d]["messages"])
    # The registry commands and the model itself work against the server unchanged.
    env = {**prefect.env, "MLFLOW_TRACKING_URI": stack["mlflow"]}
    history = subprocess.run([sys.executable, "-m", "simcse_ops.cli", "history", "medqa"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
    assert history.returncode == 0 and "challenger" in history.stdout, history.stdout + history.stderr
    load = ("import mlflow, sys; m = mlflow.pyfunc.load_model('models:/simcse-medqa/1'); "
            "print(len(m.predict(['a sentence', 'another one'])[0]))")
    dim = subprocess.run([sys.executable, "-c", load], cwd=project, env=env, capture_output=True, text=True,
                         timeout=300)
    assert dim.returncode == 0 and dim.stdout.split()[-1] == "32", dim.stdout + dim.stderr[-2000:]
    assert_no_secret(stack, list(ids.values()))


def assert_no_secret(stack, run_ids) -> None:
    """The password is in no file the stack or the runs wrote, no flow log, no deployment and no
    process command line."""
    secret = stack["password"].encode()
    for path in stack["home"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), path
    prefect = stack["prefect"]
    for run_id in run_ids:
        assert not any(stack["password"] in m["message"] for m in prefect.logs_of(run_id)), run_id
    deployments = httpx.post(f"{prefect.api}/deployments/filter", json={}).text
    assert stack["password"] not in deployments
    assert stack["password"] not in stack["up"]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert secret not in cmdline.read_bytes(), cmdline
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
