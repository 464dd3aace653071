"""What the flows publish as Prefect artifacts, rendered from the files the stages write: the STS
table of the variants (`sts.json`), the domain table (`domain.json`), the registry decision
(`registry.json`) as markdown with a link to its MLflow run, and the run report's page. Pure
functions of files (found where dvc.yaml declares them, `dvc_runner.stage_output`), no Prefect:
flows/*.py create the artifacts from what these return.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simcse_ops.dvc_runner import REPORT_STAGE, load_stage_files, stage_output
from simcse_ops.errors import ConfigError
from simcse_ops.files import read_json
from simcse_ops.report import PAGE as REPORT_PAGE


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


def sts_rows(paths: Mapping[str, Path], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """One row per variant whose `sts.json` ({variant: its path}) exists: the task figures and
    their average."""
    rows = []
    for v, path in paths.items():
        if not path.is_file():
            continue
        scores = read_json(path)
        missing = [t for t in [*tasks, "avg"] if t not in scores]
        if missing:
            raise ValueError(f"{path}: no figure for {', '.join(missing)}; expected {', '.join(tasks)}, avg")
        rows.append({"variant": v, **{t: scores[t] for t in [*tasks, "avg"]}})
    return rows


def mlflow_run_url(ui: str, experiment_id: str | None, run_id: str | None) -> str | None:
    if not run_id:
        return None
    base = ui.rstrip("/")
    if experiment_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{base}/#/runs/{run_id}"


def registry_markdown(variant: str, decision: dict[str, Any], ui: str) -> str:
    """The registry decision (`registry.json`, written by `register@V`) as markdown, with
    a link to the MLflow run that holds the model, its card and its scores."""
    name = decision.get("name") or f"simcse-{variant}"
    version = decision.get("version")
    verdict = "promoted to champion" if decision.get("promoted") else "not promoted"
    lines = [f"# {name} version {version}: {decision.get('decision', '?')} ({verdict})", ""]
    if decision.get("compared_to"):
        lines.append(f"- compared to: {decision['compared_to']}")
    if decision.get("champion") is not None:
        lines.append(f"- champion now: version {decision['champion']}")
    reasons = decision.get("reasons") or []
    if reasons:
        lines.append("- reasons:")
        lines.extend(f"  - {r}" for r in reasons)
    url = mlflow_run_url(ui, decision.get("experiment_id"), decision.get("run_id"))
    if url:
        lines.append(f"- MLflow run: [{decision['run_id']}]({url})")
    lines.append(f"- model: `models:/{name}/{version}` (aliases `challenger`"
                 f"{', `champion`' if decision.get('promoted') else ''})")
    return "\n".join(lines) + "\n"


def domain_rows(path: Path, variant: str, decision: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per domain task of `variant` in its `domain.json` (`path`): BM25, base, champion (as
    the gate saw it) and the challenger, each "value [low, high]"; [] for a variant without domain
    tasks (or not evaluated yet)."""
    if not path.is_file():
        return []
    summary = read_json(path)
    gated = (decision or {}).get("domain") or {}
    rows = []
    for name, t in summary.get("tasks", {}).items():  # not `task`: that is Prefect's decorator
        m = t["metric"]

        def cell(model: str) -> str | None:
            r = t["results"].get(model)
            return None if r is None else f"{r['metrics'][m]:.2f} [{r['ci'][m][0]:.2f}, {r['ci'][m][1]:.2f}]"

        champ = (gated.get(name) or {}).get("champion")
        refs = [r for r in summary.get("references") or [] if r != "base"]  # general references
        rows.append({"task": name + (" (primary)" if name == summary.get("primary") else ""), "metric": m,
                     "n": t["n"], "bm25": cell("bm25"), "base": cell("base"), **{r: cell(r) for r in refs},
                     "champion": None if champ is None else f"{champ:.2f}", "challenger": cell(variant)})
    references = (decision or {}).get("references") or {}
    if rows and references:  # general STS beside every reference (the forgetting guard)
        row = {k: None for k in rows[0]}
        row.update({"task": "general STS, 7-task avg", "metric": "spearman",
                    **{r: f"{x['sts_avg']:.2f}" for r, x in references.items() if r in row}})
        own = read_optional_json(path.parent / "sts.json")  # evaluate@V writes it beside domain.json
        row["challenger"] = None if own is None else f"{own['avg']:.2f}"
        rows.append(row)
    return rows


def read_optional_json(path: Path) -> dict[str, Any] | None:
    """The JSON file at `path` (`files.read_json`); None when it does not exist (its stage has not run)."""
    return read_json(path) if path.is_file() else None


def registry_file(workspace: Path, variant: str) -> Path:
    """`registry.json` as dvc.yaml declares it for `register@<variant>`."""
    return stage_output(workspace, f"register@{variant}", "registry.json")


def report_page(workspace: Path) -> Path | None:
    """The run report's page inside the folder the `report` stage declares as its output; None
    when dvc.yaml has no such stage."""
    files = load_stage_files(workspace)
    if REPORT_STAGE not in files:
        return None
    outs = files[REPORT_STAGE].outs
    if len(outs) != 1:
        raise ConfigError(f"{workspace / 'dvc.yaml'}: stage {REPORT_STAGE!r} declares {len(outs)} outs "
                          f"({', '.join(outs) or 'none'}); expected its one report folder")
    return workspace / outs[0] / REPORT_PAGE
