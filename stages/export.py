"""DVC stage `export@<variant>`: export models/<variant> to ONNX for the serving backends ->
exports/<variant>/{model.onnx, model_int8.onnx, backend.json} (backends.export_onnx).

    python -m stages.export --variant sup-nli --model models/sup-nli --out exports/sup-nli

evaluate@<variant> scores both graphs beside torch; register@<variant> logs the folder with the
version as the pyfunc artifact `onnx`, read when params.yaml `serve.backend` is onnx or onnx-int8.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from simcse_ops.backends import export_onnx
from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.progress import configure_logging


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True, help="model folder (models/<variant>)")
    ap.add_argument("--out", type=Path, required=True, help="export folder (exports/<variant>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()  # progress lines of long encodes

    load_params(args.params).variant(args.variant)  # unknown variant -> error listing the known ones
    paths = export_onnx(args.model, args.out)
    info = json.loads(paths["settings"].read_text(encoding="utf-8"))
    sizes = "  ".join(f"{name} {n / 1e6:.1f} MB" for name, n in info["bytes"].items())
    print(f"export@{args.variant}: {sizes}  (export {info['seconds']['export']:.0f} s, "
          f"quantize {info['seconds']['quantize']:.0f} s)")


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
