"""DVC stage `train@<variant>`: produce `models/<variant>/` from params.yaml `variants.<variant>`.

    python -m stages.train --variant sup-nli --data data/clean --eval-data data/ingested \
        --out models/sup-nli --metrics metrics/sup-nli/train --checkpoints checkpoints/sup-nli

`method: pretrained` exports the base encoder untrained; `unsup` / `sup` train SimCSE, `pairs`
trains InfoNCE on (anchor, positive) pairs (trainer.py); `tsdae` trains a denoising auto-encoder
(tsdae.py). Several processes (not tsdae): `torchrun --nproc_per_node=2 -m stages.train ...`
(gloo on CPU, NCCL on CUDA). A run interrupted at any point resumes from its last checkpoint in
--checkpoints.

Model selection: the `DevScorer` from `evaluation.dev_scorer_for` (a domain variant's primary task
on its dev split; otherwise STS-B dev Spearman, `evaluate.dev_task`) scores the model every
`eval_steps`; the best step is exported.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path

from simcse_ops import tracking
from simcse_ops.config import load_params
from simcse_ops.encoder import export_pretrained
from simcse_ops.errors import run_main
from simcse_ops.evaluation import dev_scorer_for
from simcse_ops.files import read_json, write_json
from simcse_ops.hardware import HARDWARE_KEYS
from simcse_ops.progress import configure_logging
from simcse_ops.trainer import run_training, write_curves
from simcse_ops.tsdae import run_tsdae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder of <source>.parquet training data")
    ap.add_argument("--eval-data", type=Path, required=True,
                    help="folder holding the dev task's <source>.parquet (evaluate.dev_task)")
    ap.add_argument("--no-dev", action="store_true", help="skip dev evaluation; export the final step")
    ap.add_argument("--out", type=Path, required=True, help="model folder to write")
    ap.add_argument("--metrics", type=Path, required=True, help="folder for training metrics and plots")
    ap.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoints")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--no-progress", action="store_true", help="no progress lines (one every ~30 s otherwise)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()

    params = load_params(args.params)
    variant = params.variant(args.variant)
    if variant.method == "pretrained":
        export_pretrained(variant.base_model, args.out)
        # The DVC stage declares the same metrics for every variant: an untrained one has no curve.
        write_curves(args.metrics, [], [])
        write_json(args.metrics / "train.json", {"variant": args.variant, "method": "pretrained", "steps": 0})
        return

    run = run_tsdae if variant.method == "tsdae" else run_training
    result = run(
        variant,
        variant=args.variant,
        data_dir=args.data,
        out_dir=args.out,
        metrics_dir=args.metrics,
        ckpt_dir=args.checkpoints,
        dev=None if args.no_dev else dev_scorer_for(params, args.variant, args.eval_data),
        dev_batch_size=params.evaluate.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    if result is not None:  # rank 0 only
        log_to_mlflow(params, args, variant, result)


def log_to_mlflow(params, args: argparse.Namespace, variant, result) -> None:
    """Params, per-step loss and dev score, sentences/s, lineage and system tags, and the hardware
    that trained it (train.json's precision, cpu_class, cpu_model, gpu as `train.<key>` tags) to a new MLflow
    run, tagged with the hash of the model folder (`model_sha256`): registration finds the run by
    it (`tracking.run_for_model`). Nothing is written into the model folder."""
    root = Path(args.params).resolve().parent
    cfg = params.mlflow
    tracking.configure(root, cfg)
    summary = {k: v for k, v in asdict(result).items() if k not in ("loss_curve", "dev_curve")}
    trained = read_json(args.metrics / "train.json")
    tags = {f"train.{k}": trained[k] for k in HARDWARE_KEYS if trained.get(k) is not None}
    tracking.log_training(
        args.variant, asdict(variant), result.loss_curve, result.dev_curve, summary, args.out, root, cfg, tags=tags
    )


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
