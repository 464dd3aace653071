"""DVC stage `train@<variant>`: produce `models/<variant>/` from params.yaml `variants.<variant>`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from simcse_ops.config import load_params


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/clean"))
    ap.add_argument("--out", type=Path, required=True, help="model folder to write")
    ap.add_argument("--metrics", type=Path, required=True, help="folder for training metrics and plots")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    params = load_params(args.params)
    variant = params.variant(args.variant)
    if variant.method == "pretrained":
        from simcse_ops.encoder import export_pretrained

        export_pretrained(variant.base_model, args.out)
        return
    raise SystemExit(f"train: method {variant.method!r} is not implemented yet")


if __name__ == "__main__":
    main()
