"""DVC stage `export@<variant>`: export models/<variant> for the serving backends ->
exports/<variant>/{model.onnx, model_int8.onnx, openvino_model*.xml/.bin, backend.json}
(backends.export_onnx), the OpenVINO int8 graph calibrated on a seeded sample of the variant's own
training sentences (params.yaml serve.calibration_sentences / calibration_seed; none for an
untrained variant).

    python -m stages.export --variant sup-nli --model models/sup-nli --data data/inputs/sup-nli/train \
        --out exports/sup-nli

evaluate@<variant> scores every graph beside torch; register@<variant> logs the folder with the
version as the pyfunc artifact `onnx`, read when params.yaml `serve.backend` is not torch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from simcse_ops.backends import OpenVinoInt8Settings, calibration_sample, export_onnx
from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.progress import configure_logging
from simcse_ops.training_data import load_training_texts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, required=True, help="model folder (models/<variant>)")
    ap.add_argument("--data", type=Path, help="the variant's training inputs (data/inputs/<variant>/train): "
                                             "the OpenVINO int8 calibration sample; omitted: no OpenVINO int8")
    ap.add_argument("--out", type=Path, required=True, help="export folder (exports/<variant>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()  # progress lines of long encodes

    params = load_params(args.params)
    variant = params.variant(args.variant)  # unknown variant -> error listing the known ones
    serve = params.serve
    calibration = None
    if args.data is not None and variant.method != "pretrained" and variant.corpus:
        texts = load_training_texts(args.data, variant.corpus, variant.method, variant.max_train_samples)
        calibration = calibration_sample(texts, serve.calibration_sentences, serve.calibration_seed)
    settings = OpenVinoInt8Settings(sentences=serve.calibration_sentences, seed=serve.calibration_seed)
    paths = export_onnx(args.model, args.out, calibration=calibration, ov_int8=settings)
    info = json.loads(paths["settings"].read_text(encoding="utf-8"))
    sizes = "  ".join(f"{name} {n / 1e6:.1f} MB" for name, n in info["bytes"].items() if not name.endswith(".xml"))
    times = "  ".join(f"{phase} {s:.0f} s" for phase, s in info["seconds"].items())
    print(f"export@{args.variant}: {sizes}  ({times})")


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
