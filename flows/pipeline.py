"""Prefect flow `simcse-pipeline`: the DVC stages in order, one Prefect task per stage target.

    ingest -> dedup -> validate -> for each variant V: train@V -> export@V -> evaluate@V -> bias@V
    -> register@V -> report

Each task runs `dvc repro --single-item <target>`: DVC decides whether the stage is up to date
(and skips it), runs its command otherwise, and records the result in `dvc.lock`. The flow only
orders the stages, retries a failed one with exponential backoff, streams DVC's output into the
task log, and publishes what a person wants to see afterwards as Prefect artifacts: a table of the
seven STS tasks per variant (`sts.json` of `evaluate@V`), the registry decision (`registry.json`
of `register@V`) with a link to its MLflow run, and a link to the run report (`reports/run/index.html`
of the `report` stage, which runs last when dvc.yaml defines it). Those files are found where
dvc.yaml declares them (`simcse_ops.dvc_runner.stage_output`); no path is built here. The plan is
`simcse_ops.dvc_runner.plan_stages`, the artifacts' contents `simcse_ops.flow_artifacts`: this
file holds the order, the Prefect tasks, their retries and the parameters.

Only one flow at a time operates on a workspace (`simcse_ops.dvc_runner.workspace_lock`); the
Prefect work pool's concurrency limit keeps queued runs from even starting (see flows/prefect.yaml).
In team mode (`simcse_ops.team`) every run has its own clone with a default DVC remote: the flow
then pulls before the stages (run cache included), runs each with `--pull`, pushes after them, and
keeps the run's dvc.lock as an artifact of every MLflow run that registered a version.

Run it once, without a server:  python -m flows.pipeline [--variant biomed ...]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from simcse_ops.config import FlowsConfig, Params, load_params
from simcse_ops.dvc_runner import (
    default_remote,
    load_stage_files,
    plan_stages,
    require_dvc_repo,
    run_dvc,
    stage_graph,
    workspace_lock,
)
from simcse_ops.errors import run_main
from simcse_ops.flow_artifacts import (
    artifact_key,
    domain_rows,
    read_optional_json,
    registry_file,
    registry_markdown,
    report_page,
    sts_rows,
)
from simcse_ops.tracking import log_dvc_lock

@task(name="dvc-repro", task_run_name="{target}", cache_policy=NO_CACHE, log_prints=False)
def repro_stage(workspace: str, target: str, stderr_tail_lines: int = 40, pull: bool = False) -> str:
    """`dvc repro --single-item TARGET`; every output line goes to this task's log. `pull`: with
    `--pull`, DVC fetches from the remote the outputs of a run-cache entry it restores."""
    logger = get_run_logger()

    def log_line(stream: str, line: str) -> None:
        # DVC and the stages write progress and warnings to stderr: informative, not errors.
        if stream == "stdout":
            logger.info(line)
        else:
            logger.info("[stderr] %s", line)

    res = run_dvc(["repro", "--single-item", *(["--pull"] if pull else []), target], workspace, on_line=log_line,
                  tail_lines=stderr_tail_lines, run_name=flow_run.get_name())
    status = stage_status(target, res.stdout)
    logger.info("%s: %s in %.1f s", target, status, res.seconds)
    return status


def stage_status(target: str, stdout: str) -> str:
    """What `dvc repro --single-item TARGET` did, from DVC's own words: "up to date" (dvc.lock
    matched), "restored" (the run cache, local or pulled from the remote, held a run with the same
    deps, params and command: outputs checked out, command not run) or "ran"."""
    if f"Stage '{target}' didn't change, skipping" in stdout:
        return "up to date"
    if f"Stage '{target}' is cached - skipping run, checking out outputs" in stdout:
        return "restored"
    return "ran"


@task(name="dvc-sync", task_run_name="dvc {command}", cache_policy=NO_CACHE, log_prints=False)
def sync_remote(workspace: str, command: str, stderr_tail_lines: int = 40) -> None:
    """`dvc pull` (before the stages) or `dvc push` (after them) through the workspace's default
    remote, the run cache included: a stage another workspace already ran with the same deps,
    params and command is then restored instead of recomputed (`stage_status` "restored")."""
    logger = get_run_logger()
    args = {"pull": ["pull", "--run-cache", "--allow-missing"], "push": ["push", "--run-cache"]}[command]
    res = run_dvc(args, workspace, on_line=lambda stream, line: logger.info("[dvc %s] %s", command, line),
                  tail_lines=stderr_tail_lines)
    logger.info("dvc %s: done in %.1f s", command, res.seconds)


def run_stages(workspace: Path, targets: Sequence[str], cfg: FlowsConfig) -> dict[str, str]:
    """Run the targets one after another as `repro_stage` tasks; stop at the first failure.

    With a default DVC remote (team mode: `simcse_ops.team`), pull what it holds first and push
    what the stages produced afterwards (also after a failure: the stages that did run are kept).
    """
    stage_task = repro_stage.with_options(
        retries=cfg.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=cfg.retry_delay_seconds),
        retry_jitter_factor=cfg.retry_jitter_factor,
    )
    remote = default_remote(workspace)
    if remote is None:
        return {t: stage_task(str(workspace), t, cfg.stderr_tail_lines) for t in targets}
    get_run_logger().info("DVC remote %r: pull before, push after", remote)
    sync_remote(str(workspace), "pull", cfg.stderr_tail_lines)
    try:
        return {t: stage_task(str(workspace), t, cfg.stderr_tail_lines, pull=True) for t in targets}
    finally:
        sync_remote(str(workspace), "push", cfg.stderr_tail_lines)


def keep_dvc_locks(workspace: Path, params: Params, statuses: Mapping[str, str]) -> dict[str, str]:
    """Log the workspace's dvc.lock to the MLflow run of every version this flow run registered
    (`register@V` ran, not restored): {variant: run id}."""
    logger = get_run_logger()
    kept: dict[str, str] = {}
    for target, status in statuses.items():
        kind, _, variant = target.partition("@")
        if kind != "register" or status != "ran":
            continue
        decision = read_optional_json(registry_file(workspace, variant)) or {}
        if decision.get("run_id"):
            where = log_dvc_lock(workspace, decision["run_id"], params.mlflow)
            logger.info("%s: dvc.lock kept as artifact %s of run %s (version %s)", variant, where,
                        decision["run_id"], decision.get("version"))
            kept[variant] = decision["run_id"]
    return kept


def hold_workspace(workspace: Path, cfg: FlowsConfig):
    """The workspace lock, logging whom a run waits for."""
    logger = get_run_logger()
    return workspace_lock(
        workspace,
        on_wait=logger.info,
        timeout_s=cfg.lock_timeout_seconds,
        holder=f"flow run {flow_run.get_name()} ({flow_run.get_id()})",
    )


# --------------------------------------------------------------------------------------------
# Artifacts


def publish_artifacts(workspace: Path, params: Params, variants: Sequence[str], cfg: FlowsConfig,
                      key_prefix: str, reference: Sequence[str] = ()) -> None:
    """A table of the STS tasks for `variants` (and the `reference` variants, for comparison) and
    one registry decision per variant, and a link to the run report when it exists. The files are
    those dvc.yaml declares for `evaluate@V` (`sts.json`, `domain.json`), `register@V`
    (`registry.json`) and `report` (its folder)."""
    logger = get_run_logger()
    tasks = list(params.evaluate.tasks)
    shown = [*variants, *(r for r in reference if r not in variants)]
    files = load_stage_files(workspace, [*(f"evaluate@{v}" for v in shown),
                                         *(f"register@{v}" for v in variants)])

    def rel(path: Path) -> str:
        return path.relative_to(workspace).as_posix()

    sts = {v: files[f"evaluate@{v}"].output("sts.json") for v in shown}
    rows = sts_rows(sts, tasks)
    if rows:
        create_table_artifact(
            table=[{k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in r.items()}
                   for r in rows],
            key=artifact_key(key_prefix, "sts"),
            description=f"STS Spearman x100 ({', '.join(tasks)}, avg) from "
                        f"{', '.join(rel(sts[r['variant']]) for r in rows)}",
        )
    for v in variants:
        registry = files[f"register@{v}"].output("registry.json")
        domain = files[f"evaluate@{v}"].output("domain.json")
        decision = read_optional_json(registry)
        table = domain_rows(domain, v, decision)
        if table:
            create_table_artifact(
                table=table, key=artifact_key(key_prefix, v, "domain"),
                description=f"{v} on its domain tasks (headline metric x100, bootstrap intervals) beside "
                            f"BM25, the base encoder and the champion it was gated against "
                            f"({rel(domain)}, {rel(registry)})",
            )
        if decision is None:
            logger.info("%s: no %s (variant not registered)", v, rel(registry))
            continue
        create_markdown_artifact(
            markdown=registry_markdown(v, decision, cfg.mlflow_ui),
            key=artifact_key("registry", v),
            description=f"registry decision for {v} ({rel(registry)})",
        )
    page = report_page(workspace)
    if page is not None and page.is_file():
        create_link_artifact(link=page.resolve().as_uri(), link_text=f"Run report ({rel(page)})",
                             key=artifact_key(key_prefix, "report"),
                             description="the run report: STS, domain, curves, SEAT and the gate per variant; "
                                         "opens from disk")


# --------------------------------------------------------------------------------------------
# Flow


@flow(name="simcse-pipeline", log_prints=True)
def pipeline(variants: list[str] | None = None, workspace: str = ".") -> dict[str, str]:
    """Run ingest, dedup, validate, every variant's train, export, evaluate, bias and register stage, then
    the run report.

    `variants`: the variants to run (default: all of params.yaml `variants`). `workspace`: the DVC
    project (default: the working directory the deployment's pull step sets).
    """
    ws = Path(workspace).resolve()
    params = load_params(ws / "params.yaml")
    cfg = params.flows
    chosen = list(variants) if variants else list(params.variants)
    for v in chosen:
        params.variant(v)  # fails at once, naming the known variants
    get_run_logger().info("workspace: %s", ws)
    with hold_workspace(ws, cfg):
        plan = plan_stages(stage_graph(ws, params), chosen, list(params.variants))
        get_run_logger().info("stages: %s", " -> ".join(plan))
        statuses = run_stages(ws, plan, cfg)
        keep_dvc_locks(ws, params, statuses)
    publish_artifacts(ws, params, chosen, cfg, key_prefix="pipeline")
    return statuses


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Run the DVC pipeline as a Prefect flow (no server needed).")
    ap.add_argument("--variant", action="append", help="a variant to run (repeatable); default: all")
    ap.add_argument("--workspace", default=".")
    args = ap.parse_args(argv)
    # Fail before Prefect starts (seconds for a temporary server, and a traceback in its log):
    # a folder that is not the project, a bad params.yaml, an unknown variant.
    params = load_params(require_dvc_repo(args.workspace) / "params.yaml")
    for v in args.variant or []:
        params.variant(v)
    statuses = pipeline(variants=args.variant, workspace=args.workspace)
    for target, status in statuses.items():
        print(f"{target}: {status}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error (a failed stage: DvcError) is one line, errors.py
