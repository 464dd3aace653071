"""Prefect flow `retrain-domain`: retrain one domain variant on its (possibly grown) corpus.

A domain variant (`Params.domain_variants`) trains and lists `domain_tasks` or trains on
`role: domain` sources only (`biomed` trains on `pubmedqa` and is judged on PubMedQA retrieval
and Medical Question Pairs). Its source paths are glob patterns under
`data.root` (`domain/biomedical/pubmedqa_pqal/ori_pqal*.json`), and the `ingest` stage depends on
`${data.root}/domain`: a new file dropped into the folder changes that dependency, so DVC re-runs
ingest and everything downstream of it. The flow runs the same stage tasks as `simcse-pipeline`,
restricted to the domain's chain (`dvc repro` of `register@<domain>` and its upstream), then reads
the `registry.json` that dvc.yaml declares for `register@<domain>` and reports whether a new
version was registered and whether it became `champion`.

Deployments (one per domain, with its cron schedule) are in flows/prefect.yaml.

Run it once, without a server:  python -m flows.retrain biomed
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import hold_workspace, keep_dvc_locks, publish_artifacts, run_stages
from simcse_ops.config import ConfigError, Params, load_params
from simcse_ops.dvc_runner import plan_stages, require_dvc_repo, stage_graph
from simcse_ops.errors import run_main
from simcse_ops.flow_artifacts import read_optional_json, registry_file
from simcse_ops.readers import FORMATS, expand_paths


def domain_variants(params: Params) -> dict[str, tuple[str, ...]]:
    """Domain variants (`Params.domain_variants`, the one definition) and their corpus sources."""
    return {name: v.corpus for name, v in params.domain_variants().items()}


def check_domain(params: Params, domain: str) -> tuple[str, ...]:
    domains = domain_variants(params)
    if domain not in domains:
        known = ", ".join(sorted(domains)) or "none (no trained variant lists domain_tasks or trains on role: domain sources)"
        raise ConfigError(f"{params.path}: unknown domain {domain!r}; known domains: {known}")
    return domains[domain]


def corpus_files(params: Params, sources: tuple[str, ...]) -> dict[str, list[str]]:
    """The files each source's paths match now, relative to the data root: the readers' own
    expansion (`simcse_ops.readers.expand_paths`), so exactly what ingest will read. A pattern
    that matches nothing fails here, as it would fail ingest, naming the params key."""
    root = params.data_root
    found: dict[str, list[str]] = {}
    for s in sources:
        source = params.sources[s]
        fmt = FORMATS.get(source.format)  # an unknown format is ingest's error to report
        files = expand_paths(s, source, root, folders=fmt is not None and fmt.folders)
        found[s] = [Path(os.path.relpath(p, root)).as_posix() for p in files]
    return found


def champion_report(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Compare the domain's `registry.json` (written by `register@<domain>`) before and after the run.

    `new_version`: the register stage registered a version other than the one before the run.
    `champion`: that version passed the promotion gate (`promoted` in registry.json);
    `champion_version`: the version the `champion` alias points at now.
    """
    if after is None:
        return {"version": None, "previous_version": None, "new_version": False, "champion": False,
                "champion_version": None, "decision": None, "reasons": []}
    return {
        "version": after.get("version"),
        "previous_version": (before or {}).get("version"),
        "new_version": before is None or before.get("version") != after.get("version"),
        "champion": bool(after.get("promoted")),
        "champion_version": after.get("champion"),
        "decision": after.get("decision"),
        "reasons": after.get("reasons") or [],
    }


@flow(name="retrain-domain", flow_run_name="retrain-{domain}", log_prints=True)
def retrain_domain(domain: str, workspace: str = ".") -> dict[str, Any]:
    """Re-ingest the domain's corpus, retrain, evaluate, probe and register it; report the verdict."""
    logger = get_run_logger()
    ws = Path(workspace).resolve()
    params = load_params(ws / "params.yaml")
    sources = check_domain(params, domain)  # an unknown domain fails here, before any DVC work
    cfg = params.flows
    logger.info("workspace: %s", ws)
    for source, files in corpus_files(params, sources).items():
        logger.info("%s: %d file(s): %s", source, len(files), ", ".join(files))
    registry = registry_file(ws, domain)  # where dvc.yaml puts register@<domain>'s decision

    with hold_workspace(ws, cfg):
        before = read_optional_json(registry)
        plan = plan_stages(stage_graph(ws, params), [domain], list(params.variants))
        logger.info("stages: %s", " -> ".join(plan))
        statuses = run_stages(ws, plan, cfg)
        after = read_optional_json(registry)
        keep_dvc_locks(ws, params, statuses)

    report = {"domain": domain, **champion_report(before, after), "stages": statuses}
    # The table shows the reference a first version must beat (register.base_variant) beside it.
    base = params.register.base_variant
    reference = [base] if base in params.variants else []
    publish_artifacts(ws, params, [domain], cfg, key_prefix=f"retrain-{domain}", reference=reference)
    if report["version"] is None:
        logger.warning("%s: no registry decision (%s missing)", domain,
                       registry.relative_to(ws).as_posix())
    elif not report["new_version"]:
        logger.info("%s: nothing changed; version %s stays (%s)", domain, report["version"],
                    "champion" if report["champion"] else "not champion")
    else:
        logger.info("%s: new version %s %s", domain, report["version"],
                    "became champion" if report["champion"] else "did NOT become champion")
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Retrain one domain variant (no server needed).")
    ap.add_argument("domain")
    ap.add_argument("--workspace", default=".")
    args = ap.parse_args(argv)
    # Fail before Prefect starts (seconds for a temporary server, and a traceback in its log).
    check_domain(load_params(require_dvc_repo(args.workspace) / "params.yaml"), args.domain)
    report = retrain_domain(domain=args.domain, workspace=args.workspace)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error (a failed stage: DvcError) is one line, errors.py
