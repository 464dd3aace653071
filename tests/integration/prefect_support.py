"""A real Prefect server's CLI and REST API for the integration tests (test_prefect_e2e, test_team):
trigger deployments, wait for flow runs, read their logs and artifacts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx

RUN_TIMEOUT_S = 900    # one retrain of the tiny project; ~2 min on an idle 2-core machine
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prefect:
    """The Prefect CLI and REST API of one temporary server."""

    def __init__(self, env: dict[str, str], api: str, logs: Path):
        self.env, self.api, self.logs = env, api, logs
        self.procs: list[subprocess.Popen] = []

    def cli(self, *args: str, cwd: Path | None = None) -> str:
        res = subprocess.run(["prefect", *args], cwd=cwd, env=self.env, capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res.stdout

    def start(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(["prefect", *args], cwd=cwd, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def get(self, path: str) -> dict:
        r = httpx.get(f"{self.api}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict) -> list | dict:
        r = httpx.post(f"{self.api}{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def trigger(self, deployment: str, cwd: Path) -> subprocess.Popen:
        """`prefect deployment run <deployment>` in the background (stdout: the flow run's UUID)."""
        return subprocess.Popen(["prefect", "deployment", "run", deployment], cwd=cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def run_id(trigger: subprocess.Popen) -> str:
        out, _ = trigger.communicate(timeout=120)
        m = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert trigger.returncode == 0 and m, out
        return m.group(1)

    def wait(self, flow_run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state_type"] in FINAL:
                return run
            time.sleep(3)
        raise AssertionError(f"flow run {flow_run_id} not finished after {timeout_s} s: "
                             f"{run['state_type']}\n{self.tail('worker')}")

    def logs_of(self, flow_run_id: str) -> list[dict]:
        out, offset = [], 0
        while True:
            page = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                              "limit": 200, "offset": offset, "sort": "TIMESTAMP_ASC"})
            out.extend(page)
            if len(page) < 200:
                return out
            offset += 200

    def flow_logs(self, flow_run_id: str, timeout_s: float = 60) -> list[str]:
        """The messages of a finished run, once its own last line ("Finished in state ...") is in:
        the flow run process sends its last log batch after it reported the final state."""
        deadline = time.monotonic() + timeout_s
        while True:
            logs = self.logs_of(flow_run_id)
            done = any(log["task_run_id"] is None and log["message"].startswith("Finished in state")
                       for log in logs)
            if done or time.monotonic() > deadline:
                return [log["message"] for log in logs]
            time.sleep(2)

    def artifacts_of(self, flow_run_id: str) -> dict[str, dict]:
        arts = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {a["key"]: a for a in arts if a.get("key")}

    def tail(self, name: str, n: int = 60) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
