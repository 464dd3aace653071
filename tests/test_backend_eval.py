"""sts.json `backends` (backend_eval.py): each backend scored on the STS tasks, its parity to
torch, and offered iff its avg is at most serve.int8_max_drop below torch's and its smallest
cosine to torch at least serve.min_cosine."""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simcse_ops.backend_eval import backends_record, evaluate_backends, offer, parity_sample
from simcse_ops.config import StsTaskConfig
from simcse_ops.hardware import cpu_info
from simcse_ops.sts import evaluate_sts

WORDS = "a man woman dog cat plays runs eats guitar piano ball food on the in park house quickly".split()


def sts_pairs(n: int, seed: int) -> pd.DataFrame:
    """n STS pairs of random sentences (4 to 12 words) with random gold scores in [0, 5]."""
    rng = np.random.default_rng(seed)

    def sentence() -> str:
        return " ".join(rng.choice(WORDS, size=rng.integers(4, 13)))

    return pd.DataFrame({"split": "test", "subset": "all", "sentence1": [sentence() for _ in range(n)],
                         "sentence2": [sentence() for _ in range(n)], "score": rng.uniform(0, 5, n)})


def fake_embed(sentences: list[str], noise: float = 0.0, dim: int = 16) -> np.ndarray:
    """A vector per sentence: the sum of fixed random word vectors, plus `noise` x a fixed random
    vector of the whole sentence (a stand-in for another backend's rounding error)."""
    def vec(text: str) -> np.ndarray:
        return np.random.default_rng(zlib.crc32(text.encode())).standard_normal(dim)

    return np.stack([sum(vec(w) for w in s.split()) + noise * vec("#" + s) for s in sentences]).astype(np.float32)


@pytest.fixture(scope="module")
def tasks() -> dict[str, pd.DataFrame]:
    return {"stsb": sts_pairs(60, 1), "sickr": sts_pairs(80, 2)}


@pytest.mark.parametrize("torch_avg, int8_avg, offered, drop", [
    (80.00, 79.70, True, 0.3),     # exactly at the limit: offered
    (70.01, 69.71, True, 0.3),     # 70.01 - 69.71 = 0.30000000000001137 in floating point
    (80.00, 79.69, False, 0.31),   # one hundredth more: not offered
    (80.00, 80.40, True, -0.4),    # int8 above torch
    (80.00, math.nan, False, math.nan),
])
def test_a_backend_is_offered_iff_the_drop_is_at_most_the_limit(torch_avg, int8_avg, offered, drop):
    r = offer("onnx-int8", torch_avg, int8_avg, 0.995, 0.3, 0.99)
    assert r["offered"] is offered and r["max_drop"] == 0.3 and r["min_cosine"] == 0.99
    assert r["drop"] == drop or (math.isnan(drop) and math.isnan(r["drop"]))
    assert ("<= serve.int8_max_drop 0.3" in r["reason"]) is offered
    assert f"torch {torch_avg:.2f}" in r["reason"] and "onnx-int8" in r["reason"]


@pytest.mark.parametrize("min_cos, offered", [(0.99, True), (0.995, True), (0.98999, False), (0.5, False)])
def test_a_backend_is_offered_only_at_the_parity_bar(min_cos, offered):
    r = offer("openvino-int8", 80.0, 80.0, min_cos, 0.3, 0.99)  # the same STS: only the cosine decides
    assert r["offered"] is offered
    assert ("is below serve.min_cosine 0.99" in r["reason"]) is (not offered)
    assert f"min cosine to torch {min_cos:.4f}" in r["reason"]


def test_parity_sample_spans_every_length_once(tasks):
    sample = parity_sample(tasks, 50)
    distinct = {s for df in tasks.values() for c in ("sentence1", "sentence2") for s in df[c]}
    assert len(sample) == 50 and len(set(sample)) == 50 and set(sample) <= distinct
    assert len(sample[0]) == min(map(len, distinct)) and len(sample[-1]) == max(map(len, distinct))
    assert sample == parity_sample(tasks, 50)
    assert sorted(parity_sample(tasks, 10_000)) == sorted(distinct)  # fewer than n: all of them


def _record(tasks, int8_noise: float, max_drop: float, min_cosine: float = -1.0, absent=None) -> dict:
    torch_result = evaluate_sts(fake_embed, tasks)
    sample = parity_sample(tasks, 40)
    embeds = {"onnx": fake_embed, "onnx-int8": lambda s: fake_embed(s, noise=int8_noise)}
    return backends_record(torch_result, embeds, tasks, sample, fake_embed(sample), max_drop, min_cosine,
                           absent=absent, cpu_class="x86 test")


def test_record_scores_each_backend_and_measures_parity(tasks):
    torch_result = evaluate_sts(fake_embed, tasks)
    rec = _record(tasks, int8_noise=3.0, max_drop=0.3)
    assert list(rec) == ["torch", "onnx", "onnx-int8"]
    assert rec["torch"] == {"tasks": {"stsb": torch_result["stsb"], "sickr": torch_result["sickr"]},
                            "avg": torch_result["avg"]}
    assert rec["onnx"]["tasks"] == rec["torch"]["tasks"] and rec["onnx"]["avg"] == rec["torch"]["avg"]
    assert rec["onnx"]["parity"]["min"] == pytest.approx(1.0, abs=1e-6) and rec["onnx"]["parity"]["n"] == 40
    assert rec["onnx"]["offered"] is True and rec["onnx"]["drop"] == 0 and rec["onnx"]["cpu_class"] == "x86 test"
    int8 = rec["onnx-int8"]
    noisy = evaluate_sts(lambda s: fake_embed(s, noise=3.0), tasks)
    assert int8["tasks"] == {"stsb": noisy["stsb"], "sickr": noisy["sickr"]} and int8["avg"] == noisy["avg"]
    assert int8["parity"]["min"] <= int8["parity"]["mean"] < 0.999
    assert int8["drop"] == round(torch_result["avg"] - noisy["avg"], 2)


def test_record_offers_int8_by_the_configured_drop(tasks):
    drop = _record(tasks, 3.0, 0.3)["onnx-int8"]["drop"]
    assert abs(drop) > 0.3  # the noise moves the avg by more than the limit
    below = _record(tasks, 3.0, abs(drop))["onnx-int8"]
    assert below["offered"] is True and below["max_drop"] == abs(drop)
    above = _record(tasks, 3.0, abs(drop) - 0.01)["onnx-int8"]
    assert above["offered"] is (drop < 0)
    assert _record(tasks, 0.0, 0.0)["onnx-int8"]["offered"] is True  # equal to torch: drop 0


def test_record_refuses_a_backend_below_the_cosine_bar_and_lists_absent_ones(tasks):
    rec = _record(tasks, 3.0, 100.0, min_cosine=0.99, absent={"openvino-int8": "not exported (why)"})
    assert rec["onnx-int8"]["parity"]["min"] < 0.99 and rec["onnx-int8"]["offered"] is False
    assert rec["onnx"]["offered"] is True  # parity 1.0
    assert rec["openvino-int8"] == {"offered": False, "reason": "not exported (why)"}


def write_sts_data(out, tasks: dict[str, pd.DataFrame]) -> None:
    """The ingested STS parquet files (`stsb.parquet`, `sick.parquet`) the params' tasks read."""
    out.mkdir(parents=True, exist_ok=True)
    for source, df in (("stsb", tasks["stsb"]), ("sick", tasks["sickr"])):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), out / f"{source}.parquet")


def two_task_params(params, int8_max_drop: float = 0.3):
    tasks = {"stsb": StsTaskConfig("stsb", "test"), "sickr": StsTaskConfig("sick", "test")}
    return dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, tasks=tasks, device="cpu", batch_size=16),
        serve=dataclasses.replace(params.serve, int8_max_drop=int8_max_drop))


def test_evaluate_backends_on_the_tiny_model(params, tasks, tiny_model_dir, tiny_export_dir, tmp_path):
    from simcse_ops.evaluation import evaluate_model

    write_sts_data(tmp_path, tasks)
    p = two_task_params(params)
    torch_result = evaluate_model(p, tiny_model_dir, tmp_path)
    rec = evaluate_backends(p, tiny_model_dir, tiny_export_dir, tmp_path, torch_result)
    assert rec["torch"]["avg"] == torch_result["avg"]
    assert rec["onnx"]["parity"]["min"] > 0.9999 and rec["onnx"]["parity"]["n"] == 2 * (60 + 80)
    assert abs(rec["onnx"]["avg"] - torch_result["avg"]) <= 0.05
    assert rec["onnx-int8"]["parity"]["min"] > 0.9
    assert rec["onnx-int8"]["offered"] is (rec["onnx-int8"]["drop"] <= 0.3 and rec["onnx-int8"]["parity"]["min"] >= 0.99)
    # OpenVINO at the plugin's precision for this CPU (bf16 on AMX): still within the parity bar
    assert rec["openvino"]["parity"]["min"] > 0.999 and abs(rec["openvino"]["avg"] - torch_result["avg"]) <= 0.3
    assert rec["openvino"]["cpu_class"] == cpu_info().cpu_class
    # the tiny export was made without calibration sentences: no OpenVINO int8 graph, and why
    assert rec["openvino-int8"]["offered"] is False
    assert "no calibration sentences" in rec["openvino-int8"]["reason"]
