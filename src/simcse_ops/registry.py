"""The model registry: registration with lineage and a model card, the promotion gate, and the
alias moves people make (`simcse-ops promote`, `simcse-ops rollback`).

Each variant is a registered model `simcse-<variant>`. Aliases: `challenger` = the newest
registered version, `champion` = the one to serve. Registration (`register_variant`):

1. read `metrics/<variant>/sts.json` and `bias.json`; decide the gate *before* touching the
   registry's versions (the decision depends only on the scores and the current champion);
2. log the pyfunc model (the sentence-transformers folder + the model card) to the variant's
   training run, with STS and bias results attached to that run;
3. create the version with every tag at once - scores, bias summary, lineage, decision, reasons,
   `registry.state=pending` - in one request (one database transaction): a version never exists
   without its tags and decision;
4. move `challenger` (and `champion` when the gate passed), logging who/why in the audit trail,
   then tag `registry.state=complete`.

If step 4 fails (the server went away), the version is deleted again and the champion restored;
if even that cannot reach the server, the next registration (or `simcse-ops repair`) does it:
`reconcile()` removes every version still `pending`. Every MLflow call is retried with exponential
backoff on connection errors and then fails with a message naming the store and the operation.

The gate (`decide`): with a champion, the challenger passes when
  avg(challenger) >= avg(champion) - epsilon,
  task(challenger) >= task(champion) - delta for each of the 7 STS tasks, and
  `simcse_ops.bias.gate_bias(challenger, champion, bias cfg)` holds.
With no champion yet, it must beat `base` (avg > base avg + first_margin) and pass the bias
criterion against base; the `base` variant itself is the reference and is promoted.

Alias moves are recorded as registered-model tags `audit.<time>-<id>` holding JSON
{alias, from, to, action, who, why, at}; `audit_log()` reads them back in order.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcse_ops import tracking
from simcse_ops.files import atomic_path, read_json
from simcse_ops.gate import Decision, DomainScore, GateInputs, RegisterConfig, Scores, decide
from simcse_ops.tracking import MlflowConfig, retry

CHALLENGER = "challenger"
CHAMPION = "champion"
PENDING, COMPLETE = "pending", "complete"
CACHE_ENV = "SIMCSE_OPS_CACHE"


class RegistryError(RuntimeError):
    """A registry action that cannot be done; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# Scores


DOMAIN_JSON, DOMAIN_ITEMS = "domain.json", "domain_items.json"  # written by the evaluate stage


def load_scores(metrics_dir: Path | str, tasks: list[str], require_bias: bool = True,
                model: str | None = None) -> Scores:
    """Read `<metrics_dir>/sts.json` (tasks + avg), `bias.json`, and when present `domain.json`
    with `domain_items.json` (the results of `model`, default the variant the folder belongs to)."""
    metrics_dir = Path(metrics_dir)
    sts_path = metrics_dir / "sts.json"
    raw = read_json(sts_path)
    missing = [t for t in [*tasks, "avg"] if not isinstance(raw.get(t), (int, float))]
    if missing:
        raise ValueError(
            f"{sts_path}: no score for {', '.join(missing)}; expected the tasks of params.yaml "
            f"evaluate.tasks and avg (rerun the evaluate stage)"
        )
    sts = {t: float(raw[t]) for t in [*tasks, "avg"]}
    domain = load_domain(metrics_dir, model)
    bias_path = metrics_dir / "bias.json"
    if not bias_path.is_file():
        if require_bias:
            raise FileNotFoundError(f"{bias_path}: not found; run the bias stage first")
        return Scores(sts, domain=domain)
    b = read_json(bias_path)
    if "summary" not in b:
        raise ValueError(f"{bias_path}: no 'summary'; expected the bias stage's output")
    return Scores(sts, dict(b["summary"]), dict(b.get("tests") or {}), domain)


def load_domain(metrics_dir: Path | str, model: str | None = None) -> dict[str, DomainScore]:
    """{task: DomainScore} of one model (default: the variant itself) from the evaluate stage's
    `domain.json` and `domain_items.json`; {} when the variant has no domain tasks."""
    path = Path(metrics_dir) / DOMAIN_JSON
    if not path.is_file():
        return {}
    d = read_json(path)
    items_path = Path(metrics_dir) / DOMAIN_ITEMS
    items = read_json(items_path)["tasks"] if items_path.is_file() else {}
    model = model or d["variant"]
    out = {}
    for task, t in d["tasks"].items():
        r = t["results"].get(model)
        if r is None:
            continue
        m = t["metric"]
        out[task] = DomainScore(m, float(r["metrics"][m]), tuple(r["ci"][m]), items.get(task, {}).get(model),
                                t.get("fingerprint"))
    return out


def scores_from_tags(tags: Mapping[str, str], tasks: list[str]) -> Scores:
    sts = {t: float(tags[f"sts.{t}"]) for t in [*tasks, "avg"] if f"sts.{t}" in tags}
    bias = json.loads(tags["bias.summary"]) if "bias.summary" in tags else None
    domain = {}
    for k, v in tags.items():
        if k.startswith("domain.") and k.endswith(".value"):
            task = k[len("domain."):-len(".value")]
            domain[task] = DomainScore(tags.get(f"domain.{task}.metric", ""), float(v))
    return Scores(sts, bias, domain=domain)


def score_tags(s: Scores) -> dict[str, str]:
    tags = {f"sts.{k}": f"{v:.4f}" for k, v in s.sts.items()}
    if s.bias is not None:
        tags["bias.summary"] = json.dumps(s.bias, sort_keys=True)
        for k, v in s.bias.items():
            if isinstance(v, (int, float, str, bool)):
                tags[f"bias.{k}"] = str(v)
    for task, d in s.domain.items():
        tags[f"domain.{task}.metric"] = d.metric
        tags[f"domain.{task}.value"] = f"{d.value:.4f}"
        if d.ci is not None:
            tags[f"domain.{task}.ci"] = f"[{d.ci[0]:.2f}, {d.ci[1]:.2f}]"
    return tags


def gate_inputs(params, variant: str) -> GateInputs:
    """What `gate.decide` needs from params.yaml for `variant` (one place, for register and promote)."""
    cfg = register_config(params)
    return GateInputs(
        tasks=list(params.evaluate.tasks),
        cfg=cfg,
        bias_cfg=_bias_config(params) if cfg.bias_gate else None,
        is_base_variant=variant == cfg.base_variant,
        # the primary domain task gates domain variants only; base scores the domain tasks as
        # the reference (the card and tags show them) and is gated as a general variant
        primary=params.variant(variant).primary if variant in params.domain_variants() else None,
        bootstrap=params.evaluate.bootstrap,
    )


# --------------------------------------------------------------------------------------------
# Model card


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def model_card(
    name: str,
    variant: str,
    vcfg: Any,
    params: Any,
    scores: Scores,
    base: Scores | None,
    champion: Scores | None,
    champion_label: str,
    decision: Decision,
    lineage: Mapping[str, str],
    tasks: list[str],
    domain_path: Path | None = None,
) -> str:
    """Markdown: data, hyper-parameters, the 7-task table, the domain tasks (with intervals, base,
    BM25 and the champion beside the variant), the bias table, the gate, use and limits."""
    lines = [f"# {name}", "", vcfg.description or f"SimCSE variant `{variant}`.", ""]
    lines += ["## Data", ""]
    if vcfg.corpus:
        for c in vcfg.corpus:
            src = params.sources[c]
            lines.append(f"- `{c}` ({src.format}, role {src.role}): {', '.join(src.paths)}")
    else:
        lines.append(f"- none: `{vcfg.base_model}` as published (method `{vcfg.method}`)")
    dvc = {k[4:]: v for k, v in lineage.items() if k.startswith("dvc.") and k != "dvc.lock"}
    if "dvc.lock" in lineage:
        lines += ["", "No dvc.lock: the stages ran outside `dvc repro`, so no dataset hashes are recorded."]
    if dvc:
        lines += ["", "DVC md5 of the datasets (dvc.lock):", ""]
        lines += [f"- `{k}`: `{v}`" for k, v in sorted(dvc.items())]
    lines += ["", f"Code: git commit `{lineage.get('git.commit', 'unknown')}`"
              + (" (uncommitted changes)" if lineage.get("git.dirty") == "true" else ""), ""]
    lines += ["## Hyper-parameters", ""]
    hp = dataclasses.asdict(vcfg)
    if vcfg.method == "pretrained":  # not trained: only what defines the encoder applies
        hp = {k: hp[k] for k in ("method", "base_model", "pooler") if k in hp}
    lines.append(_table(["parameter", "value"], [[k, f"`{v}`"] for k, v in hp.items() if k != "description"]))
    lines += ["", "## STS (Spearman x100 of cosine, 'all' setting)", ""]
    header = ["task", variant]
    if base is not None:
        header.append("base")
    if champion is not None:
        header.append(champion_label)
    rows = []
    for t in [*tasks, "avg"]:
        r = [t if t != "avg" else "**avg**", f"{scores.sts[t]:.2f}"]
        if base is not None:
            r.append(f"{base.sts.get(t, float('nan')):.2f}")
        if champion is not None:
            r.append(f"{champion.sts.get(t, float('nan')):.2f}" if t in champion.sts else "-")
        rows.append(r)
    lines += [_table(header, rows), ""]
    if domain_path is not None and Path(domain_path).is_file():
        lines += domain_table(read_json(domain_path), champion, champion_label)
    lines += ["## Bias (SEAT effect sizes, permutation p-values, Holm-Bonferroni)", ""]
    if scores.bias_tests:
        rows = []
        for test, r in sorted(scores.bias_tests.items()):
            p = r.get("p_value")
            rows.append([test, f"{float(r.get('effect_size', float('nan'))):+.3f}",
                         "-" if p is None else f"{float(p):.4f}", "yes" if r.get("significant") else "no"])
        lines += [_table(["test", "effect size d", "p-value", "significant"], rows), ""]
    if scores.bias:
        lines.append("Summary: " + ", ".join(f"{k} = {v}" for k, v in scores.bias.items()))
        lines.append("")
    if not scores.bias and not scores.bias_tests:
        lines += ["No bias results.", ""]
    lines += ["## Promotion gate", "", f"Decision: **{decision.label}** (compared with {decision.compared_to})", ""]
    lines += [f"- {r}" for r in decision.reasons]
    lines += ["", "## Intended use and limits", "",
              "- Intended use: English sentence embeddings for semantic similarity, retrieval and "
              "clustering; compare embeddings with cosine similarity.",
              f"- Trained with sequences of at most {vcfg.max_seq_length} tokens; inference uses the "
              "model's own maximum length.",
              "- Scores above are on the public STS benchmarks; performance on other domains, other "
              "languages and long documents is not measured here.",
              "- SEAT measures associations between embeddings of template sentences; a small or "
              "non-significant effect does not show the absence of social bias. Do not use the "
              "model for decisions about people without a task-specific bias evaluation.",
              ""]
    return "\n".join(lines)


def domain_table(domain: Mapping[str, Any], champion: Scores | None = None,
                 champion_label: str = "champion") -> list[str]:
    """Markdown lines: each domain task's headline metric with its bootstrap interval per model
    (the variant, the base encoder, BM25 on retrieval tasks, the current champion)."""
    models = list(domain["models"])
    conf = domain.get("bootstrap", {}).get("confidence", 0.95)
    header = ["task", "metric", "n", *models]
    if champion is not None and champion.domain:
        header.append(champion_label)
    rows = []
    for task, t in domain["tasks"].items():
        m = t["metric"]
        row = [task + (" (primary)" if task == domain.get("primary") else ""), m, str(t["n"])]
        for model in models:
            r = t["results"].get(model)
            row.append("-" if r is None else f"{r['metrics'][m]:.2f} [{r['ci'][m][0]:.2f}, {r['ci'][m][1]:.2f}]")
        if champion is not None and champion.domain:
            c = champion.domain.get(task)
            row.append("-" if c is None else f"{c.value:.2f}")
        rows.append(row)
    return [f"## Domain tasks ({conf:.0%} bootstrap intervals, test split)", "", _table(header, rows), ""]


# --------------------------------------------------------------------------------------------
# Registry plumbing


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _is_not_found(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(e, MlflowException) and (
        e.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()
    )


def _alias_version(client, name: str, alias: str, cfg: MlflowConfig):
    """The version holding `alias`, or None."""
    def get():
        try:
            return client.get_model_version_by_alias(name, alias)
        except Exception as e:
            if _is_not_found(e):
                return None
            raise

    return retry(get, f"look up {name}@{alias}", cfg)


def _ensure_registered_model(client, name: str, cfg: MlflowConfig) -> None:
    def ensure():
        try:
            client.get_registered_model(name)
        except Exception as e:
            if not _is_not_found(e):
                raise
            try:
                client.create_registered_model(name, description=f"SimCSE encoder {name}")
            except Exception as e2:
                if "already exists" not in str(e2).lower():
                    raise

    retry(ensure, f"create registered model {name}", cfg)


def _versions(client, name: str, cfg: MlflowConfig) -> list:
    return retry(lambda: list(client.search_model_versions(f"name = '{name}'")), f"list versions of {name}", cfg)


def audit_log(client, name: str, cfg: MlflowConfig | None = None) -> list[dict[str, Any]]:
    """Every alias move of `name`, oldest first."""
    cfg = cfg or MlflowConfig()
    rm = retry(lambda: client.get_registered_model(name), f"read {name}", cfg)
    entries = [(k, json.loads(v)) for k, v in rm.tags.items() if k.startswith("audit.")]
    return [e for _, e in sorted(entries)]


def move_alias(
    client, name: str, alias: str, version: str | int | None, action: str, why: str, cfg: MlflowConfig
) -> dict[str, Any]:
    """Point `alias` at `version` (None: remove it), writing the audit entry first (intent)."""
    prev = _alias_version(client, name, alias, cfg)
    now = dt.datetime.now(dt.timezone.utc)
    entry = {
        "alias": alias,
        "from": str(prev.version) if prev is not None else None,
        "to": str(version) if version is not None else None,
        "action": action,
        "who": tracking.who(),
        "why": why,
        "at": now.isoformat(timespec="seconds"),
    }
    key = f"audit.{now.strftime('%Y%m%dT%H%M%S.%f')}-{uuid.uuid4().hex[:6]}"
    retry(lambda: client.set_registered_model_tag(name, key, json.dumps(entry)), "write the audit log", cfg)
    if version is None:
        retry(lambda: client.delete_registered_model_alias(name, alias), f"remove {name}@{alias}", cfg)
    else:
        retry(lambda: client.set_registered_model_alias(name, alias, str(version)),
              f"move {name}@{alias} to version {version}", cfg)
    return entry


def reconcile(client, name: str, cfg: MlflowConfig, log: Callable[[str], None] = print) -> list[str]:
    """Remove versions a failed registration left `pending`, restoring the champion they may have
    taken. Returns the removed versions."""
    removed = []
    for mv in _versions(client, name, cfg):
        if mv.tags.get("registry.state") == COMPLETE:
            continue
        champ = _alias_version(client, name, CHAMPION, cfg)
        if champ is not None and str(champ.version) == str(mv.version):
            prev = mv.tags.get("gate.previous_champion") or None
            move_alias(client, name, CHAMPION, prev, "repair",
                       f"version {mv.version}'s registration did not complete; champion restored", cfg)
        retry(lambda v=mv.version: client.delete_model_version(name, v), f"delete {name} v{mv.version}", cfg)
        log(f"registry: removed {name} version {mv.version} (registration {mv.tags.get('registration_id', '?')} "
            f"did not complete)")
        removed.append(str(mv.version))
    return removed


def _create_version(client, name: str, source: str, run_id: str, model_id: str | None,
                    tags: dict[str, str], description: str, cfg: MlflowConfig):
    """Create the version with all its tags in one request. A retry first looks for a version with
    this registration id, so a request that succeeded before its answer was lost is not doubled."""
    reg_id = tags["registration_id"]

    def create():
        found = [mv for mv in client.search_model_versions(f"name = '{name}' and tag.registration_id = '{reg_id}'")]
        if found:
            return found[0]
        return client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description, model_id=model_id,
            await_creation_for=0,
        )

    return retry(create, f"create a version of {name}", cfg)


# --------------------------------------------------------------------------------------------
# Registration


def register_variant(
    variant: str,
    model_dir: Path | str,
    metrics_dir: Path | str,
    params: Any,
    root: Path | str,
    base_metrics_dir: Path | str | None = None,
    on_step: Callable[[str], None] | None = None,
    log: Callable[[str], None] = print,
    data_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Register `model_dir` as a new version of `simcse-<variant>` and apply the gate.

    `on_step(name)` is called at "prepare", "log_model", "create_version", "created", "aliases",
    "champion" (when promoted) and "done" (fault-injection tests stop the server at a chosen
    step). `data_dir` (data/ingested) lets a domain variant's gate re-score a champion whose
    logged per-item results do not match the current primary task. Returns the registry.json mapping. The tracking URI must be configured (`tracking.configure`).
    """
    import mlflow

    from simcse_ops.serving import CARD_ARTIFACT, ENCODER_ARTIFACT, SentenceEncoderModel, pip_requirements, signature

    step = on_step or (lambda _s: None)
    g = gate_inputs(params, variant)
    cfg = g.cfg
    mcfg = tracking.mlflow_config(params)
    vcfg = params.variant(variant)
    root, model_dir = Path(root), Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json); run the train stage")
    tasks = g.tasks
    name = cfg.model_prefix + variant
    scores = load_scores(metrics_dir, tasks, require_bias=cfg.bias_gate, model=variant)
    if g.primary is not None and g.primary not in scores.domain:
        raise FileNotFoundError(f"{Path(metrics_dir) / DOMAIN_JSON}: no results on the primary task "
                                f"{g.primary}; run the evaluate stage (dvc repro evaluate@{variant})")
    base = None
    if base_metrics_dir is not None and not g.is_base_variant:
        base = load_scores(base_metrics_dir, tasks, require_bias=False)
        # the base encoder on the domain tasks, scored in the variant's own evaluate run
        base = dataclasses.replace(base, domain=load_domain(metrics_dir, "base"))

    step("prepare")
    client = _client()
    _ensure_registered_model(client, name, mcfg)
    reconcile(client, name, mcfg, log)
    champ_mv = _alias_version(client, name, CHAMPION, mcfg)
    champion = None
    if champ_mv is not None:
        champion = scores_from_tags(champ_mv.tags, tasks)
        if g.primary is not None:
            champion = dataclasses.replace(champion, domain=_run_domain(client, champ_mv, variant, mcfg))
            if data_dir is not None and not _same_items(scores, champion, g.primary):
                champion = _rescore_champion(params, variant, name, champ_mv, champion, data_dir, g.primary, log)
    champ_label = f"champion v{champ_mv.version}" if champ_mv is not None else "none"
    decision = decide(scores, champion, champ_label, base, g)

    run = tracking.run_for_model(variant, model_dir, root, mcfg, params=dataclasses.asdict(vcfg))
    tracking.attach_results(run, "sts", scores.sts, [Path(metrics_dir) / "sts.json"])
    tracking.attach_results(run, "bias", scores.bias or {}, [Path(metrics_dir) / "bias.json"])
    if scores.domain:
        tracking.attach_results(run, "domain", {t: d.value for t, d in scores.domain.items()},
                                [Path(metrics_dir) / DOMAIN_JSON, Path(metrics_dir) / DOMAIN_ITEMS])
    lineage = {**tracking.lineage_tags(root, variant), "model_sha256": tracking.model_hash(model_dir)}
    card = model_card(name, variant, vcfg, params, scores, base, champion, champ_label, decision, lineage, tasks,
                      domain_path=Path(metrics_dir) / DOMAIN_JSON)

    step("log_model")
    with tempfile.TemporaryDirectory(prefix="simcse-card-") as tmp:
        card_path = Path(tmp) / "model_card.md"
        card_path.write_text(card, encoding="utf-8")
        run.log_artifact(card_path, "model_card")
        dim = _embedding_dim(model_dir)

        def log_model():
            with mlflow.start_run(run_id=run.run_id):
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=SentenceEncoderModel(),
                    artifacts={ENCODER_ARTIFACT: str(model_dir), CARD_ARTIFACT: str(card_path)},
                    signature=signature(dim),
                    pip_requirements=pip_requirements(),
                )

        info = retry(log_model, "upload the model", mcfg)

    step("create_version")
    tags = {
        **lineage,
        **score_tags(scores),
        "run_id": run.run_id,
        "gate.decision": decision.label,
        "gate.reasons": json.dumps(decision.reasons),
        "gate.compared_to": decision.compared_to,
        "gate.previous_champion": str(champ_mv.version) if champ_mv is not None else "",
        "gate.by": tracking.who(),
        "registration_id": uuid.uuid4().hex,
        "registry.state": PENDING,
    }
    mv = _create_version(client, name, info.model_uri, run.run_id, info.model_id, tags,
                         _description(card), mcfg)
    step("created")
    try:
        move_alias(client, name, CHALLENGER, mv.version, "register", "newly registered version", mcfg)
        step("aliases")
        if decision.promote:
            move_alias(client, name, CHAMPION, mv.version, "gate", "; ".join(decision.reasons), mcfg)
            step("champion")
        retry(lambda: client.set_model_version_tag(name, mv.version, "registry.state", COMPLETE),
              "mark the version complete", mcfg)
    except Exception as e:
        undone = _undo(client, name, str(mv.version), str(champ_mv.version) if champ_mv else None, log)
        state = ("it was deleted again" if undone else
                 f"it is left '{PENDING}' and the next registration (or `simcse-ops repair {variant}`) "
                 f"removes it")
        raise RegistryError(
            f"register {name}: version {mv.version} was created but its aliases could not be set "
            f"({tracking._first_line(e)}); {state}. Nothing was promoted. Fix the store and rerun."
        ) from e
    step("done")
    result = {
        "name": name,
        "version": int(mv.version),
        "decision": decision.label,
        "promoted": decision.promote,
        "compared_to": decision.compared_to,
        "reasons": decision.reasons,
        "champion": int(mv.version) if decision.promote else (int(champ_mv.version) if champ_mv else None),
        "run_id": run.run_id,
        "experiment_id": retry(lambda: client.get_run(run.run_id).info.experiment_id, "read the run", mcfg),
        "model_sha256": lineage["model_sha256"],
        # the domain figures the gate saw: the challenger beside the champion it was compared with
        "domain": {t: {"metric": d.metric, "challenger": d.value, "ci": list(d.ci) if d.ci else None,
                       "champion": (champion.domain[t].value if champion is not None and t in champion.domain
                                    else None)}
                   for t, d in scores.domain.items()},
    }
    log(f"register: {name} v{mv.version}: {decision.label} (vs {decision.compared_to})")
    for r in decision.reasons:
        log(f"  {r}")
    return result


def _same_items(a: Scores, b: Scores, task: str) -> bool:
    da, db = a.domain.get(task), b.domain.get(task)
    return bool(da and db and da.items and db.items and da.fingerprint == db.fingerprint
                and set(da.items["id"]) == set(db.items["id"]))


def _rescore_champion(params, variant: str, name: str, champ_mv, champion: Scores, data_dir,
                      task: str, log) -> Scores:
    """The champion on the current primary task, when its logged per-item results are missing
    (registered before domain evaluation) or on other data (the evaluation set or its document
    collection changed: another fingerprint)."""
    from simcse_ops.evaluation import rescore_domain_task  # torch and the encoder, only when needed

    log(f"register: {name} v{champ_mv.version} has no per-item results on the current {task}; re-scoring it")
    path = download_registered_model(f"models:/{name}/{champ_mv.version}")
    r = rescore_domain_task(params, task, path, data_dir)
    rescored = DomainScore(r["metric"], float(r["value"]), tuple(r["ci"]), r["items"], r["fingerprint"])
    return dataclasses.replace(champion, domain={**champion.domain, task: rescored})


def _run_domain(client, mv, model: str, mcfg: MlflowConfig) -> dict[str, DomainScore]:
    """The domain results of `model` ("base" or the variant) that a version's run logged at
    registration (domain.json and domain_items.json); {} when it logged none."""
    run_id = mv.tags.get("run_id") or mv.run_id
    if not run_id:
        return {}

    def fetch():
        import mlflow

        with tempfile.TemporaryDirectory(prefix="simcse-domain-") as tmp:
            try:
                for f in (DOMAIN_JSON, DOMAIN_ITEMS):
                    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"domain/{f}", dst_path=tmp)
            except Exception as e:
                if isinstance(e, OSError) or _is_not_found(e) or "not exist" in str(e).lower():
                    return {}
                raise
            return load_domain(tmp, model)  # download_artifacts keeps only the file name

    return retry(fetch, f"read the domain results of {mv.name} v{mv.version}", mcfg)


MAX_DESCRIPTION = 4900  # model_versions.description is VARCHAR(5000) in MLflow's SQL schema


def _description(card: str) -> str:
    """The card as the version's description, cut to fit the column (the full card is an artifact)."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    note = "\n\n... (truncated; the full card is the model's artifact `model_card.md`)\n"
    return card[: MAX_DESCRIPTION - len(note)].rsplit("\n", 1)[0] + note


def _undo(client, name: str, version: str, prev_champion: str | None, log) -> bool:
    """Best effort, one attempt each: give `champion` back (audited) if this version took it,
    then delete the half-made version."""
    once = MlflowConfig(retries=0)
    try:
        champ = _alias_version(client, name, CHAMPION, once)
        if champ is not None and str(champ.version) == version:
            move_alias(client, name, CHAMPION, prev_champion or None, "repair",
                       f"registration of version {version} failed; champion restored", once)
        client.delete_model_version(name, version)
        return True
    except Exception as e:
        log(f"registry: could not undo version {version} ({tracking._first_line(e)})")
        return False


def _embedding_dim(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for name in sorted(model_dir.glob("*_Dense/config.json")):
        cfg = {"hidden_size": json.loads(name.read_text())["out_features"]}
    return int(cfg.get("hidden_size") or cfg.get("dim") or cfg.get("d_model"))


def register_config(params) -> RegisterConfig:
    from simcse_ops.config import ConfigError, section

    cfg = section(params, "register", RegisterConfig)
    if cfg.epsilon < 0 or cfg.delta < 0:
        raise ConfigError(f"{params.path}: register.epsilon/delta: expected numbers >= 0")
    d = cfg.domain
    if not 0.0 < d.alpha < 0.5 or d.margin < 0 or d.general_max_drop < 0:
        raise ConfigError(f"{params.path}: register.domain: expected 0 < alpha < 0.5, margin >= 0 and "
                          f"general_max_drop >= 0, got {d.alpha}, {d.margin}, {d.general_max_drop}")
    return cfg


def _bias_config(params):
    from simcse_ops.bias import load_bias_config

    return load_bias_config(params)


# --------------------------------------------------------------------------------------------
# People's actions: promote, rollback


def promote(
    client, params, variant: str, version: str | int | None = None, force: bool = False,
    reason: str | None = None, log: Callable[[str], None] = print,
    base_metrics_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Move `champion` to `version` (default: the `challenger`) if the gate passes against the
    current champion (with none, against the base variant's metrics in `base_metrics_dir`, the
    register stage's `--base-metrics`); `force` (with a reason) overrides a failed gate."""
    g, mcfg = gate_inputs(params, variant), tracking.mlflow_config(params)
    cfg, tasks = g.cfg, g.tasks
    name = cfg.model_prefix + variant
    if force and not reason:
        raise RegistryError("--force needs --reason TEXT: say why the gate is overridden")
    if version is None:
        mv = _alias_version(client, name, CHALLENGER, mcfg)
        if mv is None:
            raise RegistryError(f"{name} has no '{CHALLENGER}'; register a version or pass --version N")
    else:
        mv = retry(lambda: client.get_model_version(name, str(version)), f"read {name} v{version}", mcfg)
    if mv.tags.get("registry.state") != COMPLETE:
        raise RegistryError(f"{name} v{mv.version}: registration did not complete; run `simcse-ops repair {variant}`")
    champ = _alias_version(client, name, CHAMPION, mcfg)
    if champ is not None and str(champ.version) == str(mv.version):
        raise RegistryError(f"{name} v{mv.version} is already the champion")
    label = f"champion v{champ.version}" if champ is not None else "none"

    def scores_of(version) -> Scores:
        s = scores_from_tags(version.tags, tasks)
        return dataclasses.replace(s, domain=_run_domain(client, version, variant, mcfg)) if g.primary else s

    base = None
    if champ is None and base_metrics_dir is not None and (Path(base_metrics_dir) / "sts.json").is_file():
        base = load_scores(base_metrics_dir, tasks, require_bias=False)
        if g.primary is not None:  # the base encoder on the same items, logged with the version's run
            base = dataclasses.replace(base, domain=_run_domain(client, mv, "base", mcfg))
    decision = decide(scores_of(mv), scores_of(champ) if champ is not None else None, label, base, g)
    if not decision.promote and not force:
        raise RegistryError(
            f"{name} v{mv.version} fails the gate against {decision.compared_to}:\n  "
            + "\n  ".join(decision.reasons)
            + "\n(use --force --reason TEXT to override; the override is recorded)"
        )
    action = "force" if force and not decision.promote else "promote"
    why = reason or "; ".join(decision.reasons)
    entry = move_alias(client, name, CHAMPION, mv.version, action, why, mcfg)
    for k, v in {"promoted.by": entry["who"], "promoted.at": entry["at"], "promoted.why": why,
                 "promoted.forced": str(action == "force").lower()}.items():
        retry(lambda k=k, v=v: client.set_model_version_tag(name, mv.version, k, v), "tag the version", mcfg)
    log(f"promote: {name}@{CHAMPION} v{entry['from']} -> v{mv.version} ({action}) by {entry['who']}: {why}")
    return entry


def rollback(client, params, variant: str, reason: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Move `champion` back to the version that held it before the current one (the audit log is
    replayed as a stack: promotions push, rollbacks and repairs pop)."""
    cfg, mcfg = register_config(params), tracking.mlflow_config(params)
    name = cfg.model_prefix + variant
    champ = _alias_version(client, name, CHAMPION, mcfg)
    if champ is None:
        raise RegistryError(f"{name} has no champion to roll back")
    stack: list[str] = []
    for e in audit_log(client, name, mcfg):
        if e["alias"] != CHAMPION:
            continue
        if e["action"] in ("rollback", "repair"):
            if stack:
                stack.pop()
            if e["to"] is not None and (not stack or stack[-1] != e["to"]):
                stack.append(e["to"])
        elif e["to"] is not None:
            stack.append(e["to"])
    existing = {str(mv.version) for mv in _versions(client, name, mcfg)}
    while stack and stack[-1] == str(champ.version):
        stack.pop()
    candidates = [v for v in stack if v in existing and v != str(champ.version)]
    if not candidates:
        raise RegistryError(f"{name}: no earlier champion to roll back to (champion is v{champ.version})")
    target = candidates[-1]
    why = reason or f"rollback from v{champ.version}"
    entry = move_alias(client, name, CHAMPION, target, "rollback", why, mcfg)
    retry(lambda: client.set_model_version_tag(name, champ.version, "rolled_back",
                                               json.dumps({"by": entry["who"], "at": entry["at"], "why": why})),
          "tag the version", mcfg)
    log(f"rollback: {name}@{CHAMPION} v{champ.version} -> v{target} by {entry['who']}: {why}")
    return entry


# --------------------------------------------------------------------------------------------
# Loading registered models


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, None, ALIAS); `models:/NAME/VERSION` -> (NAME, VERSION, None)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def _ensure_configured() -> MlflowConfig:
    """Outside a stage (e.g. `simcse-ops sts --model models:/...`), use the project's store."""
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    from simcse_ops.config import load_params

    params_path = Path("params.yaml")
    params = load_params(params_path) if params_path.is_file() else None
    mcfg = tracking.mlflow_config(params) if params is not None else MlflowConfig()
    if not is_tracking_uri_set() and params is not None:
        tracking.configure(params_path.resolve().parent, mcfg)
    return mcfg


def download_registered_model(uri: str, cache_dir: Path | str | None = None) -> Path:
    """The sentence-transformers folder of a registered version, downloaded once into a cache
    (`$SIMCSE_OPS_CACHE` or ~/.cache/simcse-ops/registry, keyed by store, name, version and its
    creation time)."""
    import mlflow
    import yaml

    name, version, alias = parse_models_uri(uri)
    mcfg = _ensure_configured()
    client = _client()
    if alias is not None:
        mv = _alias_version(client, name, alias, mcfg)
        if mv is None:
            raise FileNotFoundError(f"{uri}: {name} has no alias {alias!r} in {mlflow.get_tracking_uri()}")
    else:
        try:
            mv = retry(lambda: client.get_model_version(name, version), f"read {name} v{version}", mcfg)
        except Exception as e:
            if _is_not_found(e):
                raise FileNotFoundError(f"{uri}: no such version in {mlflow.get_tracking_uri()}") from e
            raise
    base = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "simcse-ops" / "registry")
    store = hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:12]
    # the creation time keeps a recreated store's "version 1" from hitting an old download
    dest = base / store / name / f"{mv.version}-{mv.creation_timestamp}"
    if not (dest / "MLmodel").is_file():
        with atomic_path(dest) as tmp:
            tmp.mkdir(parents=True)
            retry(lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp)),
                f"download {name} v{mv.version}", mcfg)
            got = [p.parent for p in tmp.rglob("MLmodel")]
            if not got:
                raise FileNotFoundError(f"{uri}: the download holds no MLmodel file")
            if got[0] != tmp:  # flatten to dest/MLmodel
                for p in got[0].iterdir():
                    p.rename(tmp / p.name)
    meta = yaml.safe_load((dest / "MLmodel").read_text(encoding="utf-8"))
    from simcse_ops.serving import ENCODER_ARTIFACT

    rel = meta["flavors"]["python_function"]["artifacts"][ENCODER_ARTIFACT]["path"]
    return dest / rel



# --------------------------------------------------------------------------------------------
# Command line (wired into simcse_ops.cli)


def _cli_setup(args):
    from simcse_ops.config import load_params

    params = load_params(args.params)
    params.variant(args.variant)
    tracking.configure(Path(args.params).resolve().parent, tracking.mlflow_config(params))
    return params, _client()


def promote_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    try:
        base_dir = args.base_metrics or Path(args.params).resolve().parent / "metrics" / register_config(params).base_variant
        promote(client, params, args.variant, args.version, args.force, args.reason, base_metrics_dir=base_dir)
    except (RegistryError, tracking.TrackingUnavailable) as e:
        print(f"simcse-ops promote: {e}", file=sys.stderr)
        return 1
    return 0


def rollback_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    try:
        rollback(client, params, args.variant, args.reason)
    except (RegistryError, tracking.TrackingUnavailable) as e:
        print(f"simcse-ops rollback: {e}", file=sys.stderr)
        return 1
    return 0


def history_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    name = register_config(params).model_prefix + args.variant
    for e in audit_log(client, name, tracking.mlflow_config(params)):
        print(f"{e['at']}  {e['alias']:<10} v{e['from']} -> v{e['to']}  {e['action']:<8} {e['who']}: {e['why']}")
    return 0


def repair_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    name = register_config(params).model_prefix + args.variant
    removed = reconcile(client, name, tracking.mlflow_config(params))
    print(f"repair: {name}: removed {len(removed)} incomplete version(s) {removed}")
    return 0


def add_registry_subcommands(sub) -> None:
    """Add `promote`, `rollback`, `history` and `repair` to the `simcse-ops` subparsers."""
    def common(p):
        p.add_argument("variant", help="variant name from params.yaml (model simcse-<variant>)")
        p.add_argument("--params", default="params.yaml")

    p = sub.add_parser("promote", help="move the champion alias to a version (the gate applies)")
    common(p)
    p.add_argument("--version", type=int, default=None, help="default: the challenger")
    p.add_argument("--force", action="store_true", help="override a failed gate (needs --reason)")
    p.add_argument("--reason", default=None, help="why; recorded in the audit log")
    p.add_argument("--base-metrics", type=Path, default=None,
                   help="metrics of the reference variant for a first champion (default metrics/<register.base_variant>)")
    p.set_defaults(func=promote_cmd)

    p = sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    common(p)
    p.add_argument("--reason", default=None, help="why; recorded in the audit log")
    p.set_defaults(func=rollback_cmd)

    p = sub.add_parser("history", help="print every alias move (who, when, why)")
    common(p)
    p.set_defaults(func=history_cmd)

    p = sub.add_parser("repair", help="remove versions whose registration did not complete")
    common(p)
    p.set_defaults(func=repair_cmd)
