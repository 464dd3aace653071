"""The `simcse-ops` command line.

    simcse-ops sts --model M --pairs FILE     score a model on a pairs file
    simcse-ops promote VARIANT                move `champion` to a version (the gate applies)
    simcse-ops rollback VARIANT               move `champion` back to the previous champion
    simcse-ops history VARIANT                every alias move: who, when, why
    simcse-ops repair VARIANT                 remove versions whose registration did not complete
    simcse-ops team up|down|status            the team stack (simcse_ops.team, README "Team setup")

The registry commands act through `simcse_ops.actions` on the store of `--params` (or
`$MLFLOW_TRACKING_URI`). mlflow is loaded only when a command talks to the store, so that
`simcse-ops --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from simcse_ops import tracking
from simcse_ops.actions import audit_log, promote, reconcile, rollback
from simcse_ops.config import load_params
from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.errors import RegistryError, run_main
from simcse_ops.store import mlflow_client
from simcse_ops.sts import embed_unique, pair_cosines, pearson100, read_pairs_file, spearman100
from simcse_ops.team import Team, status_json


def sts_cmd(args: argparse.Namespace) -> int:
    pairs = read_pairs_file(args.pairs)
    model = load_sentence_transformer(args.model, max_seq_length=args.max_seq_length, device=args.device)
    s1, s2 = pairs["sentence1"].tolist(), pairs["sentence2"].tolist()
    index, emb = embed_unique(lambda s: encode(model, s, batch_size=args.batch_size), s1 + s2)
    pred = pair_cosines(index, emb, s1, s2)
    gold = pairs["score"].to_numpy()
    print(
        json.dumps(
            {
                "spearman": round(spearman100(pred, gold), 2),
                "pearson": round(pearson100(pred, gold), 2),
                "n": len(pairs),
            }
        )
    )
    return 0


# --------------------------------------------------------------------------------------------
# Registry commands


def declared_base_metrics(params_path: Path | str, params, variant: str) -> Path | None:
    """The base variant's metrics folder as dvc.yaml's register stage declares it: the value of
    `--base-metrics` in its cmd (`metrics/${register.base_variant}`), with `${key}` the variant
    and `${a.b}` read from params.yaml, relative to the project (the folder of params.yaml).
    None without a dvc.yaml there, or when its register stage passes no `--base-metrics`.

    The one default of `simcse-ops promote --base-metrics`: the path is written once, in
    dvc.yaml, for the stage and the command alike."""
    root = Path(params_path).resolve().parent
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.is_file():
        return None
    stage = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")).get("stages") or {}).get("register") or {}
    cmd = shlex.split(str((stage.get("do") or stage).get("cmd", "")))
    if "--base-metrics" not in cmd[:-1]:
        return None

    def value(m: re.Match) -> str:
        if m.group(1) == "key":
            return variant
        obj = params
        try:
            for part in m.group(1).split("."):
                obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"{dvc_yaml}: register: cannot resolve {m.group(0)} in --base-metrics; "
                                f"pass --base-metrics DIR") from None
        return str(obj)

    return root / re.sub(r"\$\{([\w.-]+)\}", value, cmd[cmd.index("--base-metrics") + 1])


def _cli_setup(args):
    params = load_params(args.params)
    params.variant(args.variant)
    tracking.configure(Path(args.params).resolve().parent, params.mlflow)
    return params, mlflow_client()


def promote_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    base_dir = args.base_metrics or declared_base_metrics(args.params, params, args.variant)
    promote(client, params, args.variant, base_metrics_dir=base_dir, version=args.version, force=args.force,
            reason=args.reason)
    return 0


def rollback_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    rollback(client, params, args.variant, args.reason)
    return 0


def history_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    name = params.register.model_prefix + args.variant
    for e in audit_log(client, name, params.mlflow):
        print(f"{e['at']}  {e['alias']:<10} v{e['from']} -> v{e['to']}  {e['action']:<8} {e['who']}: {e['why']}")
    return 0


def repair_cmd(args: argparse.Namespace) -> int:
    params, client = _cli_setup(args)
    name = params.register.model_prefix + args.variant
    removed = reconcile(client, name, params.mlflow)
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
                   help="metrics of the reference variant for a first champion (default: the register "
                        "stage's --base-metrics in dvc.yaml, metrics/<register.base_variant>)")
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


# --------------------------------------------------------------------------------------------
# Team mode


def team_cmd(args: argparse.Namespace) -> int:
    team = Team.of(load_params(args.params))
    if args.action == "up":
        team.up(workers=args.workers)
    elif args.action == "down":
        team.down()
    else:
        print(status_json(team))
    return 0


def add_team_subcommand(sub) -> None:
    p = sub.add_parser("team", help="start / stop / show the team stack (PostgreSQL, MLflow and Prefect "
                                    "servers, work pool and workers; params.yaml `team`)")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--workers", type=int, default=None, help="default: team.workers")
    p.set_defaults(func=team_cmd)


# --------------------------------------------------------------------------------------------
# Entry point


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="simcse-ops", description="SimCSE sentence-encoder pipeline tools")
    sub = ap.add_subparsers(dest="command", required=True)

    sts = sub.add_parser("sts", help="score a model on a pairs file (Spearman/Pearson x100 of cosine)")
    sts.add_argument("--model", required=True, help="model folder, 'default', models:/NAME@ALIAS, or a hub id")
    sts.add_argument("--pairs", required=True, help="TSV/CSV/JSONL with sentence1, sentence2, score")
    sts.add_argument("--batch-size", type=int, default=64)
    sts.add_argument("--max-seq-length", type=int, default=None, help="default: the model's own")
    sts.add_argument("--device", default="auto")
    sts.set_defaults(func=sts_cmd)

    add_registry_subcommands(sub)  # promote, rollback, history, repair
    add_team_subcommand(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit statuses are the stages' (errors.py): 1 a registry action refused,
    2 a bad argument or params.yaml, 3 bad data or a missing input (a model folder, a pairs file),
    4 the MLflow store unreachable, 5 the team stack failed to start; the message on one line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)

    return run_main(lambda: args.func(args), prog=f"simcse-ops {args.command}")


if __name__ == "__main__":
    sys.exit(main())
