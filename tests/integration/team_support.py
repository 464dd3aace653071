"""The team stack on a tiny copy of the project, for tests/integration/test_team.py and
benchmarks/team_parallel.py: `simcse-ops team up` / `down` around it, the base run a person commits
first, and what a finished flow run did (from its log)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.integration.prefect_support import RUN_TIMEOUT_S, Prefect, free_port, ts
from tests.integration.tiny_project import make_tiny_project

DOMAINS = ("biomed", "medqa")  # the tiny project's biomed and a second domain variant added below
STATUS = re.compile(r"^(\S+): (ran|restored|up to date) in [\d.]+ s$")


def add_second_domain(project: Path) -> None:
    """A second domain variant `medqa` (same corpus, another learning rate) and its deployment."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"]["medqa"] = {**params["variants"]["biomed"], "lr": 5e-5,
                                   "description": "tiny second domain variant"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    spec = yaml.safe_load((project / "flows/prefect.yaml").read_text())
    biomed = next(d for d in spec["deployments"] if d["name"] == "biomed")
    spec["deployments"].append({**biomed, "name": "medqa", "parameters": {"domain": "medqa"},
                                "description": "tiny second domain"})
    (project / "flows/prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


@contextlib.contextmanager
def team_stack(project_root: Path, data_root: Path, model_dir: Path) -> Iterator[dict]:
    """`simcse-ops team up` on the tiny project (free ports, state under a /tmp folder the
    `postgres` system user can reach); `simcse-ops team down` afterwards."""
    base = Path(tempfile.mkdtemp(prefix="simcse-team-", dir="/tmp"))
    os.chmod(base, 0o755)
    project = make_tiny_project(project_root, base / "proj", data_root, model_dir)
    add_second_domain(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    ports = {"postgres_port": free_port(), "mlflow_port": free_port(), "prefect_port": free_port()}
    params["team"] = {**params.get("team", {}), "home": str(base / "team"), "workers": 2, **ports}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", "a second domain; team ports"], cwd=project, check=True)

    password = secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(SIMCSE_PG_PASSWORD=password, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    team = [sys.executable, "-m", "simcse_ops.cli", "team"]
    try:
        up = subprocess.run([*team, "up"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        api = f"http://127.0.0.1:{ports['prefect_port']}/api"
        client_env = {k: v for k, v in env.items() if k != "SIMCSE_PG_PASSWORD"}
        client_env.update(PREFECT_API_URL=api, PREFECT_HOME=str(base / "client"))
        prefect = Prefect(client_env, api, base / "team" / "logs")
        yield {"project": project, "home": base / "team", "password": password, "prefect": prefect,
               "mlflow": f"http://127.0.0.1:{ports['mlflow_port']}", "ports": ports, "up": up.stdout}
    finally:
        subprocess.run([*team, "down"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        shutil.rmtree(base, ignore_errors=True)


def run_report(prefect: Prefect, run_id: str) -> dict:
    """A finished run: its state, log span and what each DVC stage did (from the flow's log)."""
    run = prefect.wait(run_id, timeout_s=2 * RUN_TIMEOUT_S)
    messages = prefect.flow_logs(run_id)  # waits for the run's last log line
    logs = prefect.logs_of(run_id)
    statuses = {m.group(1): m.group(2) for m in map(STATUS.match, messages) if m}
    return {"run": run, "messages": messages, "statuses": statuses,
            "start": min(ts(m["timestamp"]) for m in logs), "end": max(ts(m["timestamp"]) for m in logs)}


def seed_base_run(stack: dict) -> str:
    """What a person does before the team retrains: run the base pipeline in their checkout (the
    flow pushes its data to the DVC remote) and commit dvc.lock and the metrics, as the project
    does, to the shared repository. Returns the pipeline's printed stage statuses."""
    prefect, project = stack["prefect"], stack["project"]
    remote = stack["home"] / "dvc-remote"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "--local", "--default", "team", str(remote)],
                   cwd=project, check=True, capture_output=True)
    seed = subprocess.run([sys.executable, "-m", "flows.pipeline", "--variant", "base"], cwd=project,
                          env={**prefect.env, "MLFLOW_TRACKING_URI": stack["mlflow"]}, capture_output=True,
                          text=True, timeout=1200)
    assert seed.returncode == 0, seed.stdout[-3000:] + seed.stderr[-3000:]
    assert {line.split(": ")[0]: line.split(": ")[1] for line in seed.stdout.splitlines() if ": " in line
            }.get("ingest") == "ran", seed.stdout
    assert any(remote.rglob("*")), "the pipeline pushed nothing"
    subprocess.run(["git", "add", "dvc.lock", "metrics"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "base run: dvc.lock and metrics"], cwd=project, check=True)
    subprocess.run(["git", "push", "-q", str(stack["home"] / "repo.git"), "HEAD:main"], cwd=project, check=True)

    return seed.stdout
