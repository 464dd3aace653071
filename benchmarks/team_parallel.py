"""Two domain retrains in team mode (in parallel) against the same two in today's embedded mode
(one after the other), in one session, on the tiny project. Prints one JSON line.

Team mode: `simcse-ops team up` (PostgreSQL, MLflow and Prefect servers, a pool of 2 workers), each
run clones the repository into its own folder and pulls the shared stages from the DVC remote.
Today's mode: flows/prefect.yaml's deployments on the local pool with its concurrency limit of 1
and one worker in the checkout (one workspace, guarded by the workspace file lock), MLflow the same
server. Both start from the same state: the base pipeline was run in the checkout and its dvc.lock
and metrics committed (tests/integration/team_support.seed_base_run), so the shared stages are up to
date in the checkout and in every clone after `dvc pull`. Wall time: from the two `prefect
deployment run` calls to both runs final.

    python benchmarks/team_parallel.py

(Run by path: pysbd installs a top-level `benchmarks` package.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests/integration/team_support.py)

from simcse_ops.config import load_params  # noqa: E402
from tests.integration.prefect_support import Prefect  # noqa: E402
from tests.integration.team_support import DOMAINS, run_report, seed_base_run, team_stack  # noqa: E402
from tests.tiny_bert import make_tiny_bert  # noqa: E402


def pause_schedules(prefect: Prefect) -> None:
    for d in DOMAINS:
        for s in prefect.get(f"/deployments/name/retrain-domain/{d}")["schedules"]:
            prefect.cli("deployment", "schedule", "pause", f"retrain-domain/{d}", s["id"])


def both_retrains(prefect: Prefect, project: Path) -> dict:
    """Trigger the two domain retrains at once; wall time until both are final, and per run."""
    t0 = time.monotonic()
    triggers = [prefect.trigger(f"retrain-domain/{d}", project) for d in DOMAINS]
    ids = [prefect.run_id(t) for t in triggers]
    runs = {d: run_report(prefect, i) for d, i in zip(DOMAINS, ids, strict=True)}
    wall = time.monotonic() - t0
    states = {d: r["run"]["state_type"] for d, r in runs.items()}
    if set(states.values()) != {"COMPLETED"}:
        raise SystemExit(f"not completed: {states}")
    a, b = runs.values()
    return {
        "wall_s": round(wall, 1),
        "run_s": {d: round((r["end"] - r["start"]).total_seconds(), 1) for d, r in runs.items()},
        "overlap_s": round(max(0.0, (min(a["end"], b["end"]) - max(a["start"], b["start"])).total_seconds()), 1),
        "stages": {d: r["statuses"] for d, r in runs.items()},
    }


def main() -> None:
    data_root = load_params(ROOT / "params.yaml").data_root
    with tempfile.TemporaryDirectory() as tmp, \
            team_stack(ROOT, data_root, make_tiny_bert(Path(tmp) / "tiny-bert")) as stack:
        project, prefect = stack["project"], stack["prefect"]
        seed_base_run(stack)
        pause_schedules(prefect)
        team = both_retrains(prefect, project)

        # Today's mode, same server and state: one workspace, pool concurrency 1, the file lock.
        subprocess.run([sys.executable, "-m", "dvc", "remote", "remove", "--local", "team"], cwd=project,
                       check=True, capture_output=True)
        local = Prefect({**prefect.env, "MLFLOW_TRACKING_URI": stack["mlflow"]}, prefect.api, prefect.logs)
        local.cli("work-pool", "create", "simcse-local", "--type", "process")
        local.cli("work-pool", "set-concurrency-limit", "simcse-local", "1")
        local.cli("deploy", "--no-prompt", "--all", "--prefect-file", "flows/prefect.yaml", cwd=project)
        pause_schedules(local)
        local.start("local-worker", ["worker", "start", "--pool", "simcse-local"], cwd=project)
        try:
            sequential = both_retrains(local, project)
        finally:
            local.stop_all()
    from simcse_ops.hardware import machine_report

    print(json.dumps({
        "benchmark": "team_parallel", "project": "tiny (tests/integration/tiny_project.py)",
        "machine": machine_report(),
        "team_parallel": team, "today_sequential": sequential,
        "speedup_wall": round(sequential["wall_s"] / team["wall_s"], 2),
    }))


if __name__ == "__main__":
    main()
