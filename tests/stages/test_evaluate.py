"""The evaluate@<variant> stage: sts.json keeps its torch fields and adds `backends` (tiny model)."""

from __future__ import annotations

import json

import yaml

from stages import evaluate as stage
from tests.test_backend_eval import sts_pairs, write_sts_data


def _params(tmp_path, params) -> str:
    raw = yaml.safe_load(params.path.read_text())
    raw["data"]["root"] = str(params.data_root)
    raw["evaluate"]["tasks"] = {"stsb": {"source": "stsb", "split": "test"},
                                "sickr": {"source": "sick", "split": "test"}}
    raw["evaluate"]["device"] = "cpu"
    raw["serve"]["int8_max_drop"] = 0.3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_backends_are_added_after_unchanged_torch_fields(tmp_path, params, tiny_model_dir, tiny_export_dir, capsys):
    data = tmp_path / "ingested"
    write_sts_data(data, {"stsb": sts_pairs(40, 3), "sickr": sts_pairs(50, 4)})
    p = _params(tmp_path, params)
    args = ["--variant", "unsup-wiki", "--params", p, "--data", str(data), "--model", str(tiny_model_dir)]
    stage.main([*args, "--out", str(tmp_path / "torch")])
    stage.main([*args, "--out", str(tmp_path / "all"), "--exports", str(tiny_export_dir)])
    plain = json.loads((tmp_path / "torch" / "sts.json").read_text())
    full = json.loads((tmp_path / "all" / "sts.json").read_text())

    assert "backends" not in plain and list(full) == [*plain, "backends"]
    for key in plain:
        assert full[key] == plain[key], key
    assert (tmp_path / "all" / "sts_tasks.csv").read_text() == (tmp_path / "torch" / "sts_tasks.csv").read_text()
    b = full["backends"]
    assert list(b) == ["torch", "onnx", "onnx-int8", "openvino", "openvino-int8"]
    assert b["torch"] == {"tasks": {"stsb": plain["stsb"], "sickr": plain["sickr"]}, "avg": plain["avg"]}
    scored = {"tasks", "avg", "parity", "offered", "drop", "max_drop", "min_cosine", "reason", "cpu_class"}
    assert set(b["onnx"]) == set(b["onnx-int8"]) == set(b["openvino"]) == scored
    assert set(b["onnx"]["parity"]) == {"min", "mean", "p01", "n"}
    # the tiny export has no calibration sentences: no OpenVINO int8 graph, and the reason
    assert b["openvino-int8"]["offered"] is False and "not exported" in b["openvino-int8"]["reason"]
    timing = json.loads((tmp_path / "all" / "timing.json").read_text())
    assert set(timing["sts"]) == {"encode_s", "total_s"}
    assert set(timing["backends"]) == {"onnx", "onnx-int8", "openvino"}
    assert b["onnx-int8"]["max_drop"] == 0.3
    out = capsys.readouterr().out
    assert "evaluate@unsup-wiki: onnx avg" in out and "offered:" in out
    assert "evaluate@unsup-wiki: openvino-int8 not offered (not exported" in out


def test_a_rerun_rewrites_the_scores_byte_for_byte_and_only_the_times_change(tmp_path, params, tiny_model_dir,
                                                                             tiny_export_dir):
    """register@V of every variant depends on the base variant's sts.json: a rerun of evaluate@base
    on the same model and data must leave it (and domain.json) byte-identical, or DVC reruns and
    re-registers every variant (issue 24). The encode times, which differ, go to timing.json."""
    data = tmp_path / "ingested"
    write_sts_data(data, {"stsb": sts_pairs(40, 3), "sickr": sts_pairs(50, 4)})
    p = _params(tmp_path, params)
    args = ["--variant", "unsup-wiki", "--params", p, "--data", str(data), "--model", str(tiny_model_dir),
            "--exports", str(tiny_export_dir)]
    runs = [tmp_path / "one", tmp_path / "two"]
    for out in runs:
        stage.main([*args, "--out", str(out)])
    for name in ("sts.json", "domain.json", "domain_items.json", "sts_tasks.csv", "domain_tasks.csv"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert "encode_s" not in (runs[0] / "sts.json").read_text() and "timing" not in (runs[0] / "sts.json").read_text()
    assert json.loads((runs[0] / "timing.json").read_text())["sts"]["encode_s"] >= 0
