"""The name of the pipeline run a stage belongs to, for reports that link runs together.

A Prefect flow runs DVC stages through `dvc_runner.run_dvc(..., run_name=<flow run name>)`, which
sets `SIMCSE_OPS_RUN_NAME` for DVC and so for every stage command; a plain `dvc repro` has no
flow, and the name is `dvc-repro-<git short sha>-<UTC time>`. The validate stage names its Great
Expectations run after it, and records it in metrics/validate.json `run_name`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from pathlib import Path

RUN_NAME_ENV = "SIMCSE_OPS_RUN_NAME"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_name(name: str) -> str:
    """`name` usable as one folder name (Data Docs pages live under validations/<suite>/<run>/)."""
    return _UNSAFE.sub("-", name).strip("-.") or "run"


def git_short_sha(cwd: Path | str | None = None) -> str | None:
    """The checked-out commit, abbreviated; None outside a git checkout or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def current_run_name(cwd: Path | str | None = None, now: dt.datetime | None = None) -> str:
    """$SIMCSE_OPS_RUN_NAME (the Prefect flow run), else `dvc-repro-<sha>-<YYYYmmddTHHMMSSZ>`."""
    name = os.environ.get(RUN_NAME_ENV, "").strip()
    if name:
        return safe_run_name(name)
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    sha = git_short_sha(cwd)
    return f"dvc-repro-{sha}-{stamp}" if sha else f"dvc-repro-{stamp}"
