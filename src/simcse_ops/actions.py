"""People's actions on the registry, and the alias moves and repairs registration shares.

- `promote`: move `champion` to a version (default: the `challenger`) when the gate passes
  against the current champion (with none, against the reference variant's metrics, an explicit
  argument: `simcse-ops promote --base-metrics`); `force` with a reason overrides a failed gate;
- `rollback`: move `champion` back to the version that held it before;
- `audit_log` (`simcse-ops history`): every alias move, oldest first;
- `reconcile` (`simcse-ops repair`, and the start of every registration): remove versions whose
  registration did not complete, restoring the champion they may have taken;
- `move_alias`: every alias move, audited.

Alias moves are recorded as registered-model tags `audit.<time>-<id>` holding JSON
{alias, from, to, action, who, why, at}, written before the alias moves (intent).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simcse_ops.config import MlflowConfig
from simcse_ops.errors import RegistryError
from simcse_ops.gate import decide
from simcse_ops.scores import backend_notes, base_scores, gate_inputs, reference_scores, run_domain, version_scores
from simcse_ops.store import CHALLENGER, CHAMPION, COMPLETE, alias_version, versions
from simcse_ops.tracking import retry, who


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
    prev = alias_version(client, name, alias, cfg)
    now = dt.datetime.now(dt.timezone.utc)
    entry = {
        "alias": alias,
        "from": str(prev.version) if prev is not None else None,
        "to": str(version) if version is not None else None,
        "action": action,
        "who": who(),
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
    for mv in versions(client, name, cfg):
        if mv.tags.get("registry.state") == COMPLETE:
            continue
        champ = alias_version(client, name, CHAMPION, cfg)
        if champ is not None and str(champ.version) == str(mv.version):
            prev = mv.tags.get("gate.previous_champion") or None
            move_alias(client, name, CHAMPION, prev, "repair",
                       f"version {mv.version}'s registration did not complete; champion restored", cfg)
        retry(lambda v=mv.version: client.delete_model_version(name, v), f"delete {name} v{mv.version}", cfg)
        log(f"registry: removed {name} version {mv.version} (registration {mv.tags.get('registration_id', '?')} "
            f"did not complete)")
        removed.append(str(mv.version))
    return removed


def _promotable(client, name: str, variant: str, version: str | int | None, mcfg: MlflowConfig):
    """The version to promote (default: the challenger) and the current champion version."""
    if version is None:
        mv = alias_version(client, name, CHALLENGER, mcfg)
        if mv is None:
            raise RegistryError(f"{name} has no '{CHALLENGER}'; register a version or pass --version N")
    else:
        mv = retry(lambda: client.get_model_version(name, str(version)), f"read {name} v{version}", mcfg)
    if mv.tags.get("registry.state") != COMPLETE:
        raise RegistryError(f"{name} v{mv.version}: registration did not complete; run `simcse-ops repair {variant}`")
    champ = alias_version(client, name, CHAMPION, mcfg)
    if champ is not None and str(champ.version) == str(mv.version):
        raise RegistryError(f"{name} v{mv.version} is already the champion")
    return mv, champ


def promote(
    client, params, variant: str, *, base_metrics_dir: Path | str | None, version: str | int | None = None,
    force: bool = False, reason: str | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Move `champion` to `version` (default: the `challenger`) if the gate passes against the
    current champion; `force` (with a reason) overrides a failed gate.

    With no champion yet the reference is the base variant's metrics folder `base_metrics_dir`
    (what the register stage gets as `--base-metrics`; `cli.declared_base_metrics` reads it from
    dvc.yaml); None, or a folder without sts.json, leaves the gate nothing to compare with. The
    gate's inputs are gathered as registration gathers them (`simcse_ops.scores`)."""
    g, mcfg = gate_inputs(params, variant), params.mlflow
    name = g.cfg.model_prefix + variant
    if force and not reason:
        raise RegistryError("--force needs --reason TEXT: say why the gate is overridden")
    mv, champ = _promotable(client, name, variant, version, mcfg)
    label = f"champion v{champ.version}" if champ is not None else "none"
    # the STS scores of the backend the challenger serves, for all three (see simcse_ops.scores)
    challenger = version_scores(client, mv, variant, g, mcfg)
    base = None
    if champ is None and base_metrics_dir is not None and (Path(base_metrics_dir) / "sts.json").is_file():
        # the base encoder on the same items, logged with the version's run
        domain = run_domain(client, mv, "base", mcfg) if g.primary is not None else None
        base = base_scores(base_metrics_dir, g.tasks, domain, challenger.backend)
    champion = version_scores(client, champ, variant, g, mcfg, challenger.backend) if champ is not None else None
    refs = None
    if g.primary is not None and base_metrics_dir is not None and (Path(base_metrics_dir) / "sts.json").is_file():
        # each reference on the version's items, as its run logged them at registration
        refs = reference_scores(params, variant, base_metrics_dir, Path(base_metrics_dir).parent,
                                challenger.backend, domain_of=lambda r: run_domain(client, mv, r, mcfg))
    decision = decide(challenger, champion, label, base, g, refs)
    ref, ref_label = (champion, label) if champion is not None else (base, g.cfg.base_variant)
    decision = dataclasses.replace(decision, reasons=decision.reasons + backend_notes(challenger, ref, ref_label))
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


def _champion_stack(client, name: str, mcfg: MlflowConfig) -> list[str]:
    """The champions in order, replaying the audit log as a stack: promotions push, rollbacks
    and repairs pop (and push where they land)."""
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
    return stack


def rollback(client, params, variant: str, reason: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Move `champion` back to the version that held it before the current one (the audit log is
    replayed as a stack: promotions push, rollbacks and repairs pop)."""
    cfg, mcfg = params.register, params.mlflow
    name = cfg.model_prefix + variant
    champ = alias_version(client, name, CHAMPION, mcfg)
    if champ is None:
        raise RegistryError(f"{name} has no champion to roll back")
    stack = _champion_stack(client, name, mcfg)
    existing = {str(mv.version) for mv in versions(client, name, mcfg)}
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
