"""DVC stage `register@<variant>`: register models/<variant> (with its ONNX export) in the MLflow
registry as `simcse-<variant>` (tags, model card, alias `challenger`), served with params.yaml
`serve.backend`, apply the promotion gate on that backend's STS scores, and write
metrics/<variant>/registry.json (version, decision, reasons)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from simcse_ops import tracking
from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.files import write_json
from simcse_ops.registration import register_variant


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True, help="model folder (models/<variant>)")
    ap.add_argument("--metrics", type=Path, required=True, help="folder with sts.json and bias.json")
    ap.add_argument("--base-metrics", type=Path, default=None,
                    help="metrics of the reference variant (metrics/base): a first version must beat it")
    ap.add_argument("--data", type=Path, default=None,
                    help="ingested data (data/ingested): re-score a champion with no comparable domain results")
    ap.add_argument("--exports", type=Path, default=None,
                    help="the ONNX export (exports/<variant>), logged with the model: serve.backend onnx "
                         "and onnx-int8 need it")
    ap.add_argument("--out", type=Path, required=True, help="registry.json to write")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    params = load_params(args.params)
    params.variant(args.variant)
    root = Path(args.params).resolve().parent
    uri = tracking.configure(root, params.mlflow)
    print(f"register@{args.variant}: MLflow store {uri}")
    result = register_variant(
        args.variant, args.model, args.metrics, params, root, base_metrics_dir=args.base_metrics,
        data_dir=args.data, export_dir=args.exports,
    )
    write_json(args.out, result)


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
