"""Scores, wherever they are kept, and the gate's inputs gathered in one place.

- files: `load_scores` reads a variant's `metrics/<V>/sts.json`, `bias.json` and, when present,
  `domain.json` with `domain_items.json` (the evaluate and bias stages' outputs); `load_domain`
  reads the domain tasks of one model from them;
- version tags: `score_tags` writes the tags a registered version carries (`sts.<task>`,
  `bias.summary`, `bias.<key>`, `domain.<task>.metric|value|ci`, and the serving backends':
  `serve_backend`, `sts_<backend>.<task>`, `parity_<backend>.min_cosine|mean_cosine`,
  `offered_onnx-int8`); `scores_from_tags` reads them back;
- run artifacts: `run_domain` reads the domain results (with per-item values) a version's run
  logged at registration;
- for the gate: `gate_inputs` (the settings from params.yaml), `version_scores` (a registered
  version's scores as the gate compares them), `base_scores` (the reference variant's, for a
  first champion) and `reference_scores` (a domain variant's references, each on its items). Registration (`registration.register_variant`) and `simcse-ops promote`
  (`actions.promote`) both gather their inputs through these.

Serving backends: the STS figures the gate compares (`Scores.sts`, tags `sts.<task>`) are those of
the backend the version serves (params.yaml `serve.backend`; `Scores.backend`, tag
`serve_backend`): torch's are sts.json's top level, onnx's and onnx-int8's its `backends.<name>`
(the evaluate stage). The champion and the base variant are compared on the same backend when they
have its scores (`sts_<backend>.*` tags, sts.json `backends`), otherwise on torch's (a version
registered before the backends were evaluated has torch's only); `backend_notes` says so, and
registration and promote add the note to the gate's reasons.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simcse_ops.config import MlflowConfig
from simcse_ops.errors import DataError, MissingInputError
from simcse_ops.files import read_json
from simcse_ops.gate import DomainScore, GateInputs, Scores
from simcse_ops.store import is_not_found
from simcse_ops.tracking import retry

DOMAIN_JSON, DOMAIN_ITEMS = "domain.json", "domain_items.json"  # written by the evaluate stage
TRAIN_JSON = Path("train") / "train.json"  # written by the train stage (its precision and CPU class)
SERVE_BACKEND_TAG = "serve_backend"
TORCH = "torch"  # the backend of sts.json's top level and of versions registered before backends
AUTO = "auto"  # serve.backend auto: the pyfunc picks the fastest offered backend when it loads


def has_sts(raw: Mapping[str, Any], backend: str) -> bool:
    """Whether an sts.json mapping has STS scores of `backend` (torch's always; a backend that was
    not exported has a row with only its verdict)."""
    return backend == TORCH or "tasks" in ((raw.get("backends") or {}).get(backend) or {})


def is_offered(name: str, row: Mapping[str, Any]) -> bool:
    """Whether sts.json `backends.<name>` offers the backend for serving. A row without a verdict
    comes from an evaluation before every backend got one, when the fp32 ONNX graph always was."""
    return bool(row.get("offered", name == "onnx" and "avg" in row))


def offered_backends(raw_backends: Mapping[str, Any]) -> list[str]:
    """The backends of sts.json `backends` offered for serving (torch always is)."""
    return [TORCH] + [n for n, b in raw_backends.items() if n != TORCH and is_offered(n, b)]


def gate_backend(raw: Mapping[str, Any], backend: str) -> str:
    """The backend whose STS row the gate sees: `backend`, or for `auto` (any offered backend may
    serve) the offered one with the lowest STS avg, so the gate never sees better scores than
    the version may serve with."""
    if backend != AUTO:
        return backend
    rows = raw.get("backends") or {}
    avgs = {n: float(rows[n]["avg"]) for n in offered_backends(rows) if n != TORCH}
    avgs[TORCH] = float((rows.get(TORCH) or raw)["avg"])
    return min(avgs, key=lambda n: (avgs[n], n))


# --------------------------------------------------------------------------------------------
# Files


def sts_row(raw: Mapping[str, Any], tasks: list[str], backend: str, path: Path) -> dict[str, float]:
    """The STS tasks and avg of `backend` from an sts.json mapping `raw` (read from `path`):
    torch's at the top level, another backend's in `backends.<backend>.tasks` and `.avg`."""
    if backend == TORCH:
        row = raw
    else:
        b = (raw.get("backends") or {}).get(backend)
        if b is None:
            raise ValueError(
                f"{path}: no STS scores of backend {backend!r} (no `backends.{backend}`); run the "
                f"export and evaluate stages (`dvc repro evaluate@<variant>` passes --exports), or set "
                f"params.yaml serve.backend: torch"
            )
        row = {**b["tasks"], "avg": b["avg"]}
    missing = [t for t in [*tasks, "avg"] if not isinstance(row.get(t), (int, float))]
    if missing:
        where = "" if backend == TORCH else f" of backend {backend}"
        raise ValueError(
            f"{path}: no score{where} for {', '.join(missing)}; expected the tasks of params.yaml "
            f"evaluate.tasks and avg (rerun the evaluate stage)"
        )
    return {t: float(row[t]) for t in [*tasks, "avg"]}


def load_scores(metrics_dir: Path | str, tasks: list[str], require_bias: bool = True,
                model: str | None = None, backend: str = TORCH) -> Scores:
    """Read `<metrics_dir>/sts.json` (tasks + avg of `backend`: `sts_row`; its `backends`),
    `bias.json`, and when present `domain.json` with `domain_items.json` (the results of `model`,
    default the variant the folder belongs to)."""
    metrics_dir = Path(metrics_dir)
    sts_path = metrics_dir / "sts.json"
    raw = read_json(sts_path, made_by=f"the evaluate stage (dvc repro evaluate@{model or metrics_dir.name})")
    backend = gate_backend(raw, backend)
    sts = sts_row(raw, tasks, backend, sts_path)
    backends = dict(raw.get("backends") or {})
    domain = load_domain(metrics_dir, model)
    bias_path = metrics_dir / "bias.json"
    if not bias_path.is_file():
        if require_bias:
            raise MissingInputError(f"{bias_path}: not found; run the bias stage first "
                                    f"(dvc repro bias@{model or metrics_dir.name})")
        return Scores(sts, domain=domain, backend=backend, backends=backends)
    b = read_json(bias_path)
    if "summary" not in b:
        raise DataError(bias_path, None, "no 'summary'", "the bias stage's output")
    return Scores(sts, dict(b["summary"]), dict(b.get("tests") or {}), domain, backend, backends)


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


def _tag_row(tags: Mapping[str, str], tasks: list[str], backend: str) -> dict[str, float] | None:
    """`backend`'s STS tasks and avg from a version's tags, None when it lacks any: its
    `sts_<backend>.*`, or `sts.*` when `backend` is the one it serves (torch if untagged)."""
    keys = [*tasks, "avg"]
    for prefix in (f"sts_{backend}.", "sts." if tags.get(SERVE_BACKEND_TAG, TORCH) == backend else None):
        if prefix is not None and all(prefix + t in tags for t in keys):
            return {t: float(tags[prefix + t]) for t in keys}
    return None


def scores_from_tags(tags: Mapping[str, str], tasks: list[str], backend: str | None = None) -> Scores:
    """The scores a version's tags carry (`score_tags`); domain tasks without their items.

    The STS row is `backend`'s (default: the backend the version serves), else torch's (see the
    module docstring; `Scores.backend` says which), else whatever `sts.*` tags there are (the
    gate then names the missing ones)."""
    served = tags.get(SERVE_BACKEND_TAG, TORCH)
    used = backend or served
    sts = _tag_row(tags, tasks, used)
    if sts is None and used != TORCH:
        used, sts = TORCH, _tag_row(tags, tasks, TORCH)
    if sts is None:
        used, sts = served, {t: float(tags[f"sts.{t}"]) for t in [*tasks, "avg"] if f"sts.{t}" in tags}
    bias = json.loads(tags["bias.summary"]) if "bias.summary" in tags else None
    domain = {}
    for k, v in tags.items():
        if k.startswith("domain.") and k.endswith(".value"):
            task = k[len("domain."):-len(".value")]
            domain[task] = DomainScore(tags.get(f"domain.{task}.metric", ""), float(v))
    return Scores(sts, bias, domain=domain, backend=used)


def backend_tags(s: Scores) -> dict[str, str]:
    """`serve_backend`, and per backend of sts.json `backends`: `sts_<backend>.<task>` (and
    `.avg`), `parity_<backend>.min_cosine|mean_cosine` (to torch), `offered_<backend>`."""
    tags = {SERVE_BACKEND_TAG: s.backend}
    for name, b in s.backends.items():
        if "tasks" in b:  # not an absent backend (not exported)
            tags.update({f"sts_{name}.{t}": f"{v:.4f}" for t, v in {**b["tasks"], "avg": b["avg"]}.items()})
        if "parity" in b:
            tags[f"parity_{name}.min_cosine"] = f"{b['parity']['min']:.6f}"
            tags[f"parity_{name}.mean_cosine"] = f"{b['parity']['mean']:.6f}"
        if "offered" in b:
            tags[f"offered_{name}"] = str(bool(b["offered"])).lower()
    return tags


def backend_notes(challenger: Scores, ref: Scores | None, label: str) -> list[str]:
    """A note for the gate's reasons when the reference (`label`: the champion or the base
    variant) is compared on another backend than the challenger serves."""
    if ref is None or ref.backend == challenger.backend:
        return []
    return [f"note: {label} has no {challenger.backend} STS scores (registered or evaluated before "
            f"the serving backends were); compared with its {ref.backend} scores"]


def score_tags(s: Scores) -> dict[str, str]:
    """The tags of a registered version that hold its scores (`sts.*`: the served backend's)."""
    tags = {f"sts.{k}": f"{v:.4f}" for k, v in s.sts.items()}
    tags.update(backend_tags(s))
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


def version_scores(client, mv, variant: str, g: GateInputs, mcfg: MlflowConfig,
                   backend: str | None = None) -> Scores:
    """A registered version's scores as the gate compares them: its tags (the STS row of
    `backend`, default the one it serves: `scores_from_tags`), and for a domain variant the
    per-item domain results its run logged (the paired test needs the items)."""
    s = scores_from_tags(mv.tags, g.tasks, backend)
    return dataclasses.replace(s, domain=run_domain(client, mv, variant, mcfg)) if g.primary else s


def reference_scores(params, variant: str, metrics_dir: Path | str, metrics_root: Path | str,
                     backend: str = TORCH, domain_of=None) -> dict[str, Scores]:
    """A domain variant's references (`Params.domain_references`): each one's STS scores from
    `<metrics_root>/<reference>/sts.json` (on `backend` when evaluated there) and its domain
    results scored beside the variant, from the variant's `domain.json` / `domain_items.json`
    (`domain_of(reference)` instead, e.g. a registered version's logged results)."""
    out = {}
    for ref in params.domain_references(variant):
        domain = domain_of(ref) if domain_of is not None else load_domain(metrics_dir, ref)
        if not domain:
            raise MissingInputError(
                f"{Path(metrics_dir) / DOMAIN_JSON}: no results of the reference {ref!r}; rerun the evaluate "
                f"stage (`dvc repro -f evaluate@{variant}` scores every register.domain.references)")
        out[ref] = base_scores(Path(metrics_root) / ref, [*params.evaluate.tasks], domain, backend)
    return out


def base_scores(base_metrics_dir: Path | str, tasks: list[str],
                domain: dict[str, DomainScore] | None = None, backend: str = TORCH) -> Scores:
    """The reference variant's scores from its metrics folder (the register stage's
    `--base-metrics`; no bias results needed), on `backend` when its sts.json has that backend's
    scores, else on torch's. `domain` replaces its domain results with the base encoder's scored
    beside the variant, on the variant's items; None keeps the folder's own."""
    evaluated = read_json(Path(base_metrics_dir) / "sts.json").get("backends") or {}
    used = backend if "tasks" in (evaluated.get(backend) or {}) else TORCH  # not an absent (unexported) row
    base = load_scores(base_metrics_dir, tasks, require_bias=False, backend=used)
    return base if domain is None else dataclasses.replace(base, domain=domain)
