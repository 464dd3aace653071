"""Serve the deployments of flows/prefect.yaml without a work pool or worker.

    python -m flows.serve            # every deployment, with its schedule, from flows/prefect.yaml
    python -m flows.serve --list     # print them and exit

`serve` registers the deployments with the Prefect server (PREFECT_API_URL) and runs their flow runs
in subprocesses of this process, one at a time (`limit=1`: one DVC workspace, one run), so
`prefect deployment run retrain-domain/biomed` works exactly as with a worker. The schedules are
read from flows/prefect.yaml: they stay in one place.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron

from simcse_ops.errors import ConfigError, run_main

PREFECT_FILE = Path(__file__).with_name("prefect.yaml")


@dataclass(frozen=True)
class DeploymentSpec:
    """The parts of a prefect.yaml deployment that `serve` needs."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    tags: tuple[str, ...] = ()
    schedules: tuple[dict[str, Any], ...] = ()


def read_deployments(path: Path | str = PREFECT_FILE) -> list[DeploymentSpec]:
    """The `deployments:` of a prefect.yaml file."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for i, d in enumerate(raw.get("deployments") or []):
        for key in ("name", "entrypoint"):
            if not d.get(key):
                raise ConfigError(f"{path}: deployments[{i}]: missing {key!r}")
        specs.append(
            DeploymentSpec(
                name=d["name"],
                entrypoint=d["entrypoint"],
                parameters=dict(d.get("parameters") or {}),
                description=d.get("description"),
                tags=tuple(d.get("tags") or ()),
                schedules=tuple(d.get("schedules") or ()),
            )
        )
    return specs


def to_schedules(spec: DeploymentSpec, path: Path | str = PREFECT_FILE) -> list:
    """prefect.yaml cron schedules as Prefect `Cron` schedules (cron is the only kind used here)."""
    out = []
    for s in spec.schedules:
        unknown = set(s) - {"cron", "timezone", "active", "day_or"}
        if "cron" not in s or unknown:
            raise ConfigError(
                f"{path}: deployment {spec.name!r}: schedules must be cron schedules with cron, "
                f"timezone, active (found keys {sorted(s)})"
            )
        out.append(Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True),
                        day_or=s.get("day_or", True)))
    return out


def build_deployments(specs: list[DeploymentSpec], path: Path | str = PREFECT_FILE) -> list:
    deployments = []
    for spec in specs:
        flow = load_flow_from_entrypoint(spec.entrypoint)
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                parameters=spec.parameters,
                description=spec.description,
                tags=list(spec.tags),
                schedules=to_schedules(spec, path),
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefect-file", type=Path, default=PREFECT_FILE)
    ap.add_argument("--list", action="store_true", help="print the deployments and their schedules")
    args = ap.parse_args(argv)
    specs = read_deployments(args.prefect_file)
    if args.list:
        for s in specs:
            flow_name = load_flow_from_entrypoint(s.entrypoint).name
            when = "; ".join(f"{c['cron']} ({c.get('timezone', 'UTC')})" for c in s.schedules)
            print(f"{flow_name}/{s.name}: {when or 'on demand'}  {s.parameters or ''}")
        return
    serve(*build_deployments(specs, args.prefect_file), limit=1)


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a bad prefect.yaml: one line, exit 2 (errors.py)
