"""The export@<variant> stage: models/<variant> -> exports/<variant> that the ONNX backends load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simcse_ops.backends import INT8_FILE, ONNX_FILE, OV_FILE, OV_INT8_FILE, SETTINGS_FILE, load_encoder, parity
from simcse_ops.config import ConfigError
from stages import export as stage

SENTENCES = ["A man is playing a guitar.", "Two dogs run on the beach.", "short"]


def test_stage_exports_graphs_the_onnx_backends_load(tiny_model_dir, tmp_path, params, capsys):
    out = tmp_path / "exports" / "base"
    stage.main(["--variant", "base", "--params", str(params.path), "--model", str(tiny_model_dir),
                "--out", str(out)])
    # base is untrained: no training sentences to calibrate an OpenVINO int8 graph on
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ONNX_FILE, INT8_FILE, SETTINGS_FILE, OV_FILE, OV_FILE.replace(".xml", ".bin")])
    info = json.loads((out / SETTINGS_FILE).read_text())
    assert info["model_dir"] == str(tiny_model_dir) and info["pooling"] == ["mean"]
    assert "no calibration sentences" in info["openvino_int8"]["absent"]
    assert "export@base: model.onnx" in capsys.readouterr().out

    torch_emb = load_encoder(tiny_model_dir, "torch").encode(SENTENCES, 2)
    onnx_emb = load_encoder(tiny_model_dir, "onnx", onnx_dir=out).encode(SENTENCES, 2)
    assert parity(torch_emb, onnx_emb)["min"] > 0.9999
    assert np.isfinite(load_encoder(tiny_model_dir, "onnx-int8", onnx_dir=out).encode(SENTENCES, 2)).all()


def test_stage_calibrates_openvino_int8_on_the_variants_own_training_sentences(tiny_model_dir, tmp_path, params):
    import pyarrow as pa
    import pyarrow.parquet as pq

    variant = params.variant("unsup-wiki")
    assert variant.method == "unsup" and variant.corpus == ("wiki1m",)
    data = tmp_path / "inputs" / "unsup-wiki" / "train"
    data.mkdir(parents=True)
    sentences = [f"training sentence {i} about {w}" for i, w in enumerate(["cats", "rivers", "music"] * 8)]
    pq.write_table(pa.table({"text": sentences}), data / "wiki1m.parquet")
    out = tmp_path / "exports" / "unsup-wiki"
    stage.main(["--variant", "unsup-wiki", "--params", str(params.path), "--model", str(tiny_model_dir),
                "--data", str(data), "--out", str(out)])
    info = json.loads((out / SETTINGS_FILE).read_text())
    assert info["openvino_int8"]["calibrated_on"] == len(sentences)  # fewer than serve.calibration_sentences
    assert info["openvino_int8"]["seed"] == params.serve.calibration_seed
    ov_int8 = load_encoder(tiny_model_dir, "openvino-int8", onnx_dir=out).encode(SENTENCES, 2)
    assert parity(load_encoder(tiny_model_dir, "torch").encode(SENTENCES, 2), ov_int8)["mean"] > 0.99
    assert (out / OV_INT8_FILE).is_file()


def test_stage_refuses_an_unknown_variant_before_exporting(tiny_model_dir, tmp_path, params):
    out = tmp_path / "exports" / "nope"
    with pytest.raises(ConfigError, match="no variant 'nope'"):
        stage.main(["--variant", "nope", "--params", str(params.path), "--model", str(tiny_model_dir),
                    "--out", str(out)])
    assert not out.exists()
