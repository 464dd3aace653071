"""Smoke tests of the inference benchmarks, run by path as a user runs them, with tiny settings on the
tiny BERT fixture: benchmarks/encode_throughput.py (JSON shape, parity) and benchmarks/serve_load.py
(the real `mlflow models serve` of torch and onnx-int8: zero errors, every figure present and positive)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float = 300) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def tiny_exports(tiny_model_dir, tmp_path_factory) -> Path:
    from simcse_ops.backends import export_onnx

    out = tmp_path_factory.mktemp("tiny-exports") / "onnx"
    export_onnx(tiny_model_dir, out)
    return out


def test_encode_throughput_smoke(tiny_model_dir, tiny_exports, data_root):
    out = _run("encode_throughput.py", "--model", str(tiny_model_dir), "--exports", str(tiny_exports),
               "--n", "200", "--repeats", "1", "--batch-sizes", "32", "--warmup", "32",
               "--backends", "torch-bf16,onnx,onnx-int8,onnx-int8-ffn-fp32,onnx-fused,openvino,openvino-f32")
    assert out["benchmark"] == "encode_throughput" and out["n_sentences"] == 200
    rows = out["results"]["32"]
    assert set(rows) == {"torch", "torch-bf16", "onnx", "onnx-int8", "onnx-int8-ffn-fp32", "onnx-fused",
                         "openvino", "openvino-f32"}
    assert (out["int8_settings"]["ffn"], out["int8_settings"]["ffn_block_size"]) == ("blockwise", 64)
    # the fixture's export has no calibration sentences, so no OpenVINO int8 graph
    assert sorted(p.name for p in tiny_exports.iterdir()) == ["backend.json", "model.onnx", "model_int8.onnx",
                                                              "openvino_model.bin", "openvino_model.xml"]
    assert out["openvino_precision"]["openvino-f32"] == "f32" and rows["openvino-f32"]["parity_cos_min"] > 0.9999
    assert out["target"]["cpu_class"] == out["machine"]["cpu_class"]
    assert out["target"]["min_speedup"] in (3.0, 1.6)
    assert rows["onnx-fused"]["parity_cos_min"] > 0.9999
    for name, row in rows.items():
        assert row["sentences_per_s_best"] > 0 and row["speedup_best"] > 0, name
        assert 0.9 < row["parity_cos_min"] <= 1.0 + 1e-6, (name, row)
    assert rows["torch"]["speedup_best"] == 1.0
    assert rows["onnx"]["parity_cos_min"] > 0.9999  # fp32 graph: the same model
    assert out["sts_source"]["kind"] == "none" and out["meets_target"] is None  # no STS for a fixture


def test_serve_load_smoke(tiny_model_dir, tiny_exports, data_root):
    out = _run("serve_load.py", "--model", str(tiny_model_dir), "--exports", str(tiny_exports),
               "--backends", "torch,onnx-int8", "--requests", "6", "--concurrency", "1,4", "--pool", "300",
               "--time-limit", "60")
    assert out["total_errors"] == 0
    assert [r["backend"] for r in out["results"]] == ["torch", "onnx-int8"]
    for r in out["results"]:
        assert r["startup_s"] > 0 and r["peak_rss_mb"] > 0
        assert [lv["concurrency"] for lv in r["levels"]] == [1, 4]
        for lv in r["levels"]:
            assert lv["errors"] == 0 and lv["ok"] == 6, lv
            assert lv["requests_per_s"] > 0 and lv["sentences_per_s"] > 0 and lv["peak_rss_mb"] > 0
            lat = lv["latency_ms"]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"], lat
