"""Scores, wherever they are kept, and the gate's inputs gathered in one place.

- files: `load_scores` reads a variant's `metrics/<V>/sts.json`, `bias.json` and, when present,
  `domain.json` with `domain_items.json` (the evaluate and bias stages' outputs); `load_domain`
  reads the domain tasks of one model from them;
- version tags: `score_tags` writes the tags a registered version carries (`sts.<task>`,
  `bias.summary`, `bias.<key>`, `domain.<task>.metric|value|ci`); `scores_from_tags` reads them back;
- run artifacts: `run_domain` reads the domain results (with per-item values) a version's run
  logged at registration;
- for the gate: `gate_inputs` (the settings from params.yaml), `version_scores` (a registered
  version's scores as the gate compares them) and `base_scores` (the reference variant's, for a
  first champion). Registration (`registration.register_variant`) and `simcse-ops promote`
  (`actions.promote`) both gather their inputs through these.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from simcse_ops.config import MlflowConfig
from simcse_ops.files import read_json
from simcse_ops.gate import DomainScore, GateInputs, Scores
from simcse_ops.store import is_not_found
from simcse_ops.tracking import retry

DOMAIN_JSON, DOMAIN_ITEMS = "domain.json", "domain_items.json"  # written by the evaluate stage


# --------------------------------------------------------------------------------------------
# Files


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


# --------------------------------------------------------------------------------------------
# Version tags


def scores_from_tags(tags: Mapping[str, str], tasks: list[str]) -> Scores:
    """The scores a version's tags carry (`score_tags`); domain tasks without their items."""
    sts = {t: float(tags[f"sts.{t}"]) for t in [*tasks, "avg"] if f"sts.{t}" in tags}
    bias = json.loads(tags["bias.summary"]) if "bias.summary" in tags else None
    domain = {}
    for k, v in tags.items():
        if k.startswith("domain.") and k.endswith(".value"):
            task = k[len("domain."):-len(".value")]
            domain[task] = DomainScore(tags.get(f"domain.{task}.metric", ""), float(v))
    return Scores(sts, bias, domain=domain)


def score_tags(s: Scores) -> dict[str, str]:
    """The tags of a registered version that hold its scores."""
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


# --------------------------------------------------------------------------------------------
# Run artifacts


def run_domain(client, mv, model: str, mcfg: MlflowConfig) -> dict[str, DomainScore]:
    """The domain results of `model` ("base" or the variant) that a version's run logged at
    registration (domain.json and domain_items.json); {} when it logged none."""
    run_id = mv.tags.get("run_id") or mv.run_id
    if not run_id:
        return {}

    def fetch():
        import mlflow  # lazy: see store.mlflow_client()

        with tempfile.TemporaryDirectory(prefix="simcse-domain-") as tmp:
            try:
                for f in (DOMAIN_JSON, DOMAIN_ITEMS):
                    mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"domain/{f}", dst_path=tmp)
            except Exception as e:
                if isinstance(e, OSError) or is_not_found(e) or "not exist" in str(e).lower():
                    return {}
                raise
            return load_domain(tmp, model)  # download_artifacts keeps only the file name

    return retry(fetch, f"read the domain results of {mv.name} v{mv.version}", mcfg)


# --------------------------------------------------------------------------------------------
# The gate's inputs


def gate_inputs(params, variant: str) -> GateInputs:
    """What `gate.decide` needs from params.yaml for `variant` (one place, for register and promote)."""
    cfg = params.register
    return GateInputs(
        tasks=list(params.evaluate.tasks),
        cfg=cfg,
        bias_cfg=params.bias if cfg.bias_gate else None,
        is_base_variant=variant == cfg.base_variant,
        # the primary domain task gates domain variants only; base scores the domain tasks as
        # the reference (the card and tags show them) and is gated as a general variant
        primary=params.variant(variant).primary if variant in params.domain_variants() else None,
        bootstrap=params.evaluate.bootstrap,
    )


def version_scores(client, mv, variant: str, g: GateInputs, mcfg: MlflowConfig) -> Scores:
    """A registered version's scores as the gate compares them: its tags, and for a domain
    variant the per-item domain results its run logged (the paired test needs the items)."""
    s = scores_from_tags(mv.tags, g.tasks)
    return dataclasses.replace(s, domain=run_domain(client, mv, variant, mcfg)) if g.primary else s


def base_scores(base_metrics_dir: Path | str, tasks: list[str],
                domain: dict[str, DomainScore] | None = None) -> Scores:
    """The reference variant's scores from its metrics folder (the register stage's
    `--base-metrics`; no bias results needed). `domain` replaces its domain results with the
    base encoder's scored beside the variant, on the variant's items; None keeps the folder's own."""
    base = load_scores(base_metrics_dir, tasks, require_bias=False)
    return base if domain is None else dataclasses.replace(base, domain=domain)
