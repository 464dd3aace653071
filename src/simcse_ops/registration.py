"""Registration of a variant's model as a new version, with lineage, a model card and the gate.

`register_variant` (the register stage) runs four steps:

1. gather (`gather`, `gather_champion`): read `metrics/<variant>/sts.json`, `bias.json` (and the
   domain results), the base variant's metrics, and the current champion's scores (re-scoring it
   when its logged per-item results are not on the current primary task); decide the gate
   *before* touching the registry's versions (the decision depends only on the scores and the
   current champion; `scores.gate_inputs` gathers the gate's settings for promote too);
2. log (`_attach_to_run`, `_log_model`): attach STS, bias and domain results and the model card
   to the variant's training run (found by its tags: `tracking.run_for_model`), and log the pyfunc
   model (the sentence-transformers folder, the ONNX export of the export stage, the card) to it;
3. register (`_create_version`, `_set_aliases`): create the version with every tag at once -
   scores, bias summary, lineage, decision, reasons, `registry.state=pending` - in one request
   (one database transaction), so a version never exists without its tags and decision; move
   `challenger` (and `champion` when the gate passed), logging who/why in the audit trail, then
   tag `registry.state=complete`. If that fails (the server went away), the version is deleted
   again and the champion restored (`_undo`); if even that cannot reach the server, the next
   registration (or `simcse-ops repair`) does it: `actions.reconcile` removes every version still
   `pending`;
4. write (`_record`): the mapping the stage writes to `metrics/<variant>/registry.json`.

Every MLflow call is retried with exponential backoff on connection errors and then fails with a
message naming the store and the operation (`tracking.retry`).

The served backend (params.yaml `serve.backend`: torch, onnx, onnx-int8, openvino, openvino-int8
or auto) is pickled with the pyfunc, with the backends offered for the version, and the gate sees
that backend's STS scores (sts.json `backends`, `scores.load_scores`; for auto the offered backend
with the lowest STS avg); the champion's and base's are taken on the same backend when they have
them (else torch's, with a note among the reasons). A backend is refused, before anything is
written, for a version where the evaluate stage did not offer it (its STS avg fell more than
serve.int8_max_drop below torch's, or its cosine to torch below serve.min_cosine).

The gate (`gate.decide`): with a champion, the challenger passes when
  avg(challenger) >= avg(champion) - epsilon,
  task(challenger) >= task(champion) - delta for each of the 7 STS tasks, and
  `simcse_ops.gate.gate_bias(challenger, champion, bias cfg)` holds.
With no champion yet, it must beat `base` (avg > base avg + first_margin) and pass the bias
criterion against base; the `base` variant itself is the reference and is promoted.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow  # serving.py loads it anyway (SentenceEncoderModel subclasses mlflow.pyfunc.PythonModel)

from simcse_ops import tracking
from simcse_ops.actions import move_alias, reconcile
from simcse_ops.card import model_card
from simcse_ops.config import MlflowConfig, ServeConfig
from simcse_ops.errors import MissingInputError, RegistryError
from simcse_ops.files import read_json
from simcse_ops.evaluation import rescore_domain_task
from simcse_ops.gate import Decision, DomainScore, GateInputs, Scores, best_general, decide
from simcse_ops.scores import (
    AUTO, DOMAIN_ITEMS, DOMAIN_JSON, TORCH, TRAIN_JSON, backend_notes, base_scores, gate_inputs, load_domain,
    is_offered, load_scores, offered_backends, reference_scores, score_tags, version_scores,
)
from simcse_ops.serving import CARD_ARTIFACT, ENCODER_ARTIFACT, SentenceEncoderModel, pip_requirements, signature
from simcse_ops.store import (
    CHALLENGER, CHAMPION, COMPLETE, PENDING, alias_version, ensure_registered_model, mlflow_client,
)
from simcse_ops.tracking import retry
from simcse_ops.uris import ONNX_ARTIFACT, download_registered_model

MAX_DESCRIPTION = 4900  # model_versions.description is VARCHAR(5000) in MLflow's SQL schema


@dataclass
class Gathered:
    """What the gate and the card see, gathered before anything is written to the registry."""

    variant: str
    name: str  # the registered model
    g: GateInputs
    scores: Scores  # the challenger's
    base: Scores | None  # the reference variant's (None for the reference itself)
    champ_mv: Any = None  # the champion's model version, None when there is none
    champion: Scores | None = None
    references: dict[str, Scores] | None = None  # a domain variant's (scores.reference_scores)

    @property
    def champ_label(self) -> str:
        return f"champion v{self.champ_mv.version}" if self.champ_mv is not None else "none"

    @property
    def prev_champion(self) -> str | None:
        return str(self.champ_mv.version) if self.champ_mv is not None else None


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
    export_dir: Path | str | None = None,
) -> dict[str, Any]:
    """Register `model_dir` as a new version of `simcse-<variant>` and apply the gate.

    `on_step(name)` is called at "prepare", "log_model", "create_version", "created", "aliases",
    "champion" (when promoted) and "done" (fault-injection tests stop the server at a chosen
    step). `data_dir` (data/ingested) lets a domain variant's gate re-score a champion whose
    logged per-item results do not match the current primary task. `export_dir` (exports/<variant>,
    the export stage's ONNX graphs) is logged with the model as the artifact `onnx`; the ONNX
    backends need it. Returns the registry.json mapping. The tracking URI must be configured
    (`tracking.configure`).
    """
    step = on_step or (lambda _s: None)
    root, model_dir, metrics_dir = Path(root), Path(model_dir), Path(metrics_dir)
    mcfg = params.mlflow
    experiment = tracking.dvc_experiment()
    uncommitted = [] if experiment else tracking.uncommitted_inputs(root)
    if uncommitted and params.register.uncommitted == "refuse":
        raise RegistryError(
            f"register {params.register.model_prefix}{variant}: {_listed(uncommitted)} differ from the last "
            f"commit and register.uncommitted is 'refuse': commit them, then `dvc repro` (or set "
            f"register.uncommitted: hold to register without moving champion)")
    ev = gather(params, variant, model_dir, metrics_dir, base_metrics_dir)
    check_backend(ev, params.serve.backend, export_dir)

    step("prepare")
    client = mlflow_client()
    if not experiment:  # an experiment reads the registry and writes nothing to it
        ensure_registered_model(client, ev.name, mcfg)
        reconcile(client, ev.name, mcfg, log)
    gather_champion(client, params, ev, data_dir, log)
    decision = decide(ev.scores, ev.champion, ev.champ_label, ev.base, ev.g, ev.references)
    ref, ref_label = (ev.champion, ev.champ_label) if ev.champion is not None else (ev.base, ev.g.cfg.base_variant)
    decision = dataclasses.replace(decision, reasons=decision.reasons + backend_notes(ev.scores, ref, ref_label))
    if experiment:
        return _record_experiment(params, ev, decision, experiment, model_dir, metrics_dir, root, ref, log)
    if uncommitted and decision.promote:  # register.uncommitted: hold
        decision = dataclasses.replace(decision, promote=False, held=True, reasons=decision.reasons + [
            f"held: {_listed(uncommitted)} differ from the last commit; champion stays. Commit them, then "
            f"`dvc repro -f -s register@{variant}` registers from the commit (README \"Experiments\")"])
    run, lineage, card = _attach_to_run(params, ev, decision, model_dir, metrics_dir, root)

    step("log_model")
    info = _log_model(run, model_dir, card, mcfg, params.serve, export_dir,
                      offered=offered_backends(ev.scores.backends) if export_dir is not None else [TORCH])

    step("create_version")
    tags = _version_tags(ev, decision, lineage, run.run_id)
    mv = _create_version(client, ev.name, info.model_uri, run.run_id, info.model_id, tags,
                         _description(card), mcfg)
    step("created")
    _set_aliases(client, ev, decision, str(mv.version), mcfg, step, log)
    step("done")
    result = _record(client, ev, decision, int(mv.version), run.run_id, lineage, mcfg, ref)
    log(f"register: {ev.name} v{mv.version}: {decision.label} (vs {decision.compared_to})")
    for r in decision.reasons:
        log(f"  {r}")
    return result


# --------------------------------------------------------------------------------------------
# 1. Gather


def gather(params, variant: str, model_dir: Path, metrics_dir: Path, base_metrics_dir: Path | str | None) -> Gathered:
    """The challenger's scores and the reference's, from the stages' files (no registry access)."""
    params.variant(variant)  # an unknown variant fails before anything is read
    g = gate_inputs(params, variant)
    if not (model_dir / "config.json").is_file():
        raise MissingInputError(f"{model_dir}: not a model folder (no config.json); run the train stage")
    backend = params.serve.backend  # the gate sees the served backend's STS scores
    scores = load_scores(metrics_dir, g.tasks, require_bias=g.cfg.bias_gate, model=variant, backend=backend)
    if g.primary is not None and g.primary not in scores.domain:
        raise MissingInputError(f"{metrics_dir / DOMAIN_JSON}: no results on the primary task "
                                f"{g.primary}; run the evaluate stage (dvc repro evaluate@{variant})")
    base = None
    if base_metrics_dir is not None and not g.is_base_variant:
        # the base encoder on the domain tasks, scored in the variant's own evaluate run
        base = base_scores(base_metrics_dir, g.tasks, load_domain(metrics_dir, "base"), backend)
    refs = None
    if g.primary is not None and base_metrics_dir is not None and not g.is_base_variant:
        check_references(metrics_dir, model_dir.parent, variant)
        refs = reference_scores(params, variant, metrics_dir, Path(base_metrics_dir).parent, backend)
    return Gathered(variant, g.cfg.model_prefix + variant, g, scores, base, references=refs)


def check_references(metrics_dir: Path, models_root: Path, variant: str) -> None:
    """Refuse to judge a domain variant against a reference model that changed after its evaluate
    stage scored it (domain.json `reference_models`: sha256 of each folder then)."""
    scored = read_json(metrics_dir / DOMAIN_JSON).get("reference_models") or {}
    for ref, sha in scored.items():
        folder = models_root / ref
        if folder.is_dir() and tracking.model_hash(folder) != sha:
            raise RegistryError(
                f"register {variant}: {folder} changed after evaluate@{variant} scored it; rerun "
                f"`dvc repro -f evaluate@{variant}` so the gate compares with the current {ref}")


def check_backend(ev: Gathered, backend: str, export_dir: Path | str | None) -> None:
    """Refuse, before anything is written, a served backend this version cannot serve: an exported
    backend without the export, or one the evaluate stage did not offer."""
    if export_dir is not None and not Path(export_dir).is_dir():
        raise RegistryError(f"register {ev.name}: {export_dir}: no ONNX export; run `dvc repro export@{ev.variant}`")
    if backend in (TORCH, AUTO):
        return  # auto: the pyfunc chooses among torch and the offered backends (none without an export)
    if export_dir is None:
        raise RegistryError(
            f"register {ev.name}: serve.backend {backend} needs the export, and none was given; "
            f"pass --exports exports/{ev.variant} (dvc.yaml's register stage does), or set serve.backend: torch"
        )
    row = ev.scores.backends.get(backend, {})
    if not is_offered(backend, row):
        offered = [n for n in offered_backends(ev.scores.backends) if n != TORCH]
        raise RegistryError(
            f"register {ev.name}: serve.backend {backend} is not offered for this version: "
            f"{row.get('reason', f'sts.json has no {backend} verdict')}. Offered: "
            f"{', '.join(offered) or 'none'}; set params.yaml serve.backend to one of them, to auto or to "
            f"torch, or accept a larger difference (serve.int8_max_drop, serve.min_cosine)"
        )


def gather_champion(client, params, ev: Gathered, data_dir: Path | str | None, log: Callable[[str], None]) -> None:
    """Fill in the current champion and its scores (re-scored on the current primary task when
    its logged per-item results are missing or on other data, and `data_dir` is given)."""
    ev.champ_mv = alias_version(client, ev.name, CHAMPION, params.mlflow)
    if ev.champ_mv is None:
        return
    ev.champion = version_scores(client, ev.champ_mv, ev.variant, ev.g, params.mlflow, backend=ev.scores.backend)
    primary = ev.g.primary
    if primary is not None and data_dir is not None and not _same_items(ev.scores, ev.champion, primary):
        ev.champion = _rescore_champion(params, ev.name, ev.champ_mv, ev.champion, data_dir, primary, log)


def _same_items(a: Scores, b: Scores, task: str) -> bool:
    da, db = a.domain.get(task), b.domain.get(task)
    return bool(da and db and da.items and db.items and da.fingerprint == db.fingerprint
                and set(da.items["id"]) == set(db.items["id"]))


def _rescore_champion(params, name: str, champ_mv, champion: Scores, data_dir, task: str, log) -> Scores:
    """The champion on the current primary task, when its logged per-item results are missing
    (registered before domain evaluation) or on other data (the evaluation set or its document
    collection changed: another fingerprint)."""
    log(f"register: {name} v{champ_mv.version} has no per-item results on the current {task}; re-scoring it")
    path = download_registered_model(f"models:/{name}/{champ_mv.version}")
    r = rescore_domain_task(params, task, path, data_dir)
    rescored = DomainScore(r["metric"], float(r["value"]), tuple(r["ci"]), r["items"], r["fingerprint"])
    return dataclasses.replace(champion, domain={**champion.domain, task: rescored})


# --------------------------------------------------------------------------------------------
# 2. Log to the training run


def _attach_to_run(params, ev: Gathered, decision: Decision, model_dir: Path, metrics_dir: Path, root: Path):
    """The variant's run with the results attached, the version's lineage tags, and the card."""
    vcfg, scores = params.variant(ev.variant), ev.scores
    run = tracking.run_for_model(ev.variant, model_dir, root, params.mlflow, params=dataclasses.asdict(vcfg))
    # the run's `sts` metrics stay torch's (the model's own quality, comparable across runs)
    torch = scores.backends.get(TORCH)
    tracking.attach_results(run, "sts", {**torch["tasks"], "avg": torch["avg"]} if torch else scores.sts,
                            [metrics_dir / "sts.json"])
    tracking.attach_results(run, "bias", scores.bias or {}, [metrics_dir / "bias.json"])
    if scores.domain:
        tracking.attach_results(run, "domain", {t: d.value for t, d in scores.domain.items()},
                                [metrics_dir / DOMAIN_JSON, metrics_dir / DOMAIN_ITEMS])
    lineage = {**tracking.lineage_tags(root, ev.variant), "model_sha256": tracking.model_hash(model_dir)}
    card = model_card(ev.name, ev.variant, vcfg, params, scores, ev.base, ev.champion, ev.champ_label, decision,
                      lineage, ev.g.tasks, domain_path=metrics_dir / DOMAIN_JSON,
                      train_path=metrics_dir / TRAIN_JSON, references=ev.references)
    return run, lineage, card


def _embedding_dim(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    for name in sorted(model_dir.glob("*_Dense/config.json")):
        cfg = {"hidden_size": json.loads(name.read_text())["out_features"]}
    return int(cfg.get("hidden_size") or cfg.get("dim") or cfg.get("d_model"))


def _log_model(run: tracking.RunLogger, model_dir: Path, card: str, mcfg: MlflowConfig, scfg: ServeConfig,
               export_dir: Path | str | None = None, offered: list[str] | None = None):
    """Upload the card to the run and log the pyfunc model (the folder, the export when given,
    the card) to it, with params.yaml `serve` (backend and limits) and the `offered` backends
    (serve.backend auto chooses among them) stored in it."""
    with tempfile.TemporaryDirectory(prefix="simcse-card-") as tmp:
        card_path = Path(tmp) / "model_card.md"
        card_path.write_text(card, encoding="utf-8")
        run.log_artifact(card_path, "model_card")
        dim = _embedding_dim(model_dir)

        def log_model():
            with mlflow.start_run(run_id=run.run_id):
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=SentenceEncoderModel(batch_size=scfg.batch_size, max_batch=scfg.max_batch,
                                                      max_chars=scfg.max_chars, backend=scfg.backend,
                                                      offered=tuple(offered or [TORCH])),
                    artifacts={ENCODER_ARTIFACT: str(model_dir), CARD_ARTIFACT: str(card_path),
                               **({ONNX_ARTIFACT: str(export_dir)} if export_dir is not None else {})},
                    signature=signature(dim, batch_size=scfg.batch_size),
                    pip_requirements=pip_requirements(),
                )

        return retry(log_model, "upload the model", mcfg)


# --------------------------------------------------------------------------------------------
# 3. Register


def _version_tags(ev: Gathered, decision: Decision, lineage: dict[str, str], run_id: str) -> dict[str, str]:
    return {
        **lineage,
        **score_tags(ev.scores),
        "run_id": run_id,
        "gate.decision": decision.label,
        "gate.reasons": json.dumps(decision.reasons),
        "gate.compared_to": decision.compared_to,
        "gate.previous_champion": ev.prev_champion or "",
        "gate.by": tracking.who(),
        "registration_id": uuid.uuid4().hex,
        "registry.state": PENDING,
    }


def _description(card: str) -> str:
    """The card as the version's description, cut to fit the column (the full card is an artifact)."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    note = "\n\n... (truncated; the full card is the model's artifact `model_card.md`)\n"
    return card[: MAX_DESCRIPTION - len(note)].rsplit("\n", 1)[0] + note


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


def _set_aliases(client, ev: Gathered, decision: Decision, version: str, mcfg: MlflowConfig,
                 step: Callable[[str], None], log: Callable[[str], None]) -> None:
    """Move `challenger` (and `champion` when promoted), then mark the version complete; on
    failure undo the version and raise RegistryError."""
    try:
        move_alias(client, ev.name, CHALLENGER, version, "register", "newly registered version", mcfg)
        step("aliases")
        if decision.promote:
            move_alias(client, ev.name, CHAMPION, version, "gate", "; ".join(decision.reasons), mcfg)
            step("champion")
        retry(lambda: client.set_model_version_tag(ev.name, version, "registry.state", COMPLETE),
              "mark the version complete", mcfg)
    except Exception as e:
        undone = _undo(client, ev.name, version, ev.prev_champion, log)
        state = ("it was deleted again" if undone else
                 f"it is left '{PENDING}' and the next registration (or `simcse-ops repair {ev.variant}`) "
                 f"removes it")
        raise RegistryError(
            f"register {ev.name}: version {version} was created but its aliases could not be set "
            f"({tracking.first_line(e)}); {state}. Nothing was promoted. Fix the store and rerun."
        ) from e


def _undo(client, name: str, version: str, prev_champion: str | None, log) -> bool:
    """Best effort, one attempt each: give `champion` back (audited) if this version took it,
    then delete the half-made version."""
    once = MlflowConfig(retries=0)
    try:
        champ = alias_version(client, name, CHAMPION, once)
        if champ is not None and str(champ.version) == version:
            move_alias(client, name, CHAMPION, prev_champion or None, "repair",
                       f"registration of version {version} failed; champion restored", once)
        client.delete_model_version(name, version)
        return True
    except Exception as e:
        log(f"registry: could not undo version {version} ({tracking.first_line(e)})")
        return False


# --------------------------------------------------------------------------------------------
# Outside a committed state


NOT_REGISTERED = "experiment: not registered"


def _listed(paths: list[str]) -> str:
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    return f"{len(paths)} tracked file(s) ({shown})"


def _record_experiment(params, ev: Gathered, decision: Decision, experiment: dict[str, str], model_dir: Path,
                       metrics_dir: Path, root: Path, ref: Scores | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Inside `dvc exp run`: track the gate in its own MLflow run (tagged with the experiment's
    name and baseline commit, the scores as metrics, the decision it would have made) and write
    registry.json without a version. No version is created and no alias moves."""
    name = experiment["dvc.exp_name"]
    digest = tracking.model_hash(model_dir)
    with tracking.start_run(ev.variant, params=dataclasses.asdict(params.variant(ev.variant)), root=root,
                            cfg=params.mlflow, run_name=f"exp-{name}-{ev.variant}-gate") as run:
        # not `model_sha256`: that tag marks the run that trained the model (tracking.run_for_model)
        run.set_tags({"stage": "experiment-gate", "gate.model_sha256": digest, "gate.decision": decision.label,
                      "gate.would_promote": str(decision.promote).lower(), "gate.compared_to": decision.compared_to,
                      "gate.reasons": "\n".join(decision.reasons)[:4900]})
        torch = ev.scores.backends.get(TORCH)
        tracking.attach_results(run, "sts", {**torch["tasks"], "avg": torch["avg"]} if torch else ev.scores.sts,
                                [metrics_dir / "sts.json"])
        tracking.attach_results(run, "bias", ev.scores.bias or {}, [metrics_dir / "bias.json"])
        if ev.scores.domain:
            tracking.attach_results(run, "domain", {t: d.value for t, d in ev.scores.domain.items()},
                                    [metrics_dir / DOMAIN_JSON])
    log(f"register: {ev.name}: {NOT_REGISTERED} (experiment {name}, baseline "
        f"{experiment['dvc.exp_baseline_rev'][:12]}); the gate would {'promote' if decision.promote else 'refuse'} "
        f"it (vs {decision.compared_to})")
    for r in decision.reasons:
        log(f"  {r}")
    return {
        "name": ev.name,
        "version": None,
        "decision": NOT_REGISTERED,
        "promoted": False,
        "registered": False,
        "experiment": {"name": name, "baseline_rev": experiment["dvc.exp_baseline_rev"]},
        "gate": {"decision": decision.label, "would_promote": decision.promote},
        "compared_to": decision.compared_to,
        "reasons": decision.reasons,
        "champion": int(ev.champ_mv.version) if ev.champ_mv is not None else None,
        "run_id": run.run_id,
        "model_sha256": digest,
        "serve_backend": ev.scores.backend,
        "reference_sts": ({"backend": ref.backend, **ref.sts} if ref is not None else None),
    }


# --------------------------------------------------------------------------------------------
# 4. Write


def _record(client, ev: Gathered, decision: Decision, version: int, run_id: str, lineage: dict[str, str],
            mcfg: MlflowConfig, ref: Scores | None) -> dict[str, Any]:
    """The registry.json mapping: the version, the decision and the run it belongs to, and the
    STS row of the reference the gate compared it with (`ref`: the champion, else base; None for
    the reference variant itself), so that a report can show both side by side."""
    champion_version = int(ev.champ_mv.version) if ev.champ_mv is not None else None
    return {
        "name": ev.name,
        "version": version,
        "registered": True,
        "decision": decision.label,
        "promoted": decision.promote,
        "compared_to": decision.compared_to,
        "reasons": decision.reasons,
        "champion": version if decision.promote else champion_version,
        "run_id": run_id,
        "experiment_id": retry(lambda: client.get_run(run_id).info.experiment_id, "read the run", mcfg),
        "model_sha256": lineage["model_sha256"],
        "serve_backend": ev.scores.backend,  # whose STS scores the gate saw
        "reference_sts": ({"backend": ref.backend, **ref.sts} if ref is not None else None),
        # the domain figures the gate saw: the challenger beside the champion it was compared with
        "domain": {t: {"metric": d.metric, "challenger": d.value, "ci": list(d.ci) if d.ci else None,
                       "champion": (ev.champion.domain[t].value
                                    if ev.champion is not None and t in ev.champion.domain else None),
                       "references": {r: s.domain[t].value for r, s in (ev.references or {}).items()
                                      if t in s.domain}}
                   for t, d in ev.scores.domain.items()},
        # a domain variant's references: general STS avg (the forgetting guard's best one marked)
        "references": ({r: {"sts_avg": s.sts["avg"], "best_general": r == best_general(ev.references)}
                        for r, s in ev.references.items()} if ev.references else None),
    }
