"""The bias@<variant> stage end to end: real SEAT data (as ingest writes it), the tiny model."""

from __future__ import annotations

import csv
import json
import math

import pyarrow.parquet as pq
import pytest
import yaml

from simcse_ops.schemas import SEAT
from stages import bias as stage


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, params, data_root):
    """data/ingested/seat.parquet written by ingest's reader from the real SEAT files."""
    from simcse_ops.readers import load_source

    out = tmp_path_factory.mktemp("ingested")
    table = load_source("seat", params.sources["seat"], data_root).table
    assert table.schema.equals(SEAT)
    pq.write_table(table, out / "seat.parquet")
    return out


def _params(tmp_path, params, **bias) -> str:
    raw = yaml.safe_load(params.path.read_text())
    raw["data"]["root"] = str(params.data_root)
    raw["bias"] = {**raw.get("bias", {}), **bias}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.slow
def test_stage_on_real_seat_with_tiny_model(tmp_path, params, ingested, tiny_model_dir, capsys):
    p = _params(tmp_path, params, n_samples=2000, device="cpu")
    out = tmp_path / "metrics" / "base"
    stage.main(["--variant", "base", "--params", p, "--data", str(ingested),
                "--model", str(tiny_model_dir), "--out", str(out)])

    result = json.loads((out / "bias.json").read_text())
    assert result["variant"] == "base"
    tests = result["tests"]
    assert len(tests) == 50 and "sent-weat1" in tests and "sent-religion1" in tests
    for name, t in tests.items():
        assert math.isfinite(t["effect_size"]) and abs(t["effect_size"]) < 2.0, name  # |d| <= 2 for equal halves
        assert 0.0 < t["p_value"] <= 1.0 and t["p_value"] <= t["p_value_holm"] <= 1.0, name
        assert isinstance(t["significant"], bool)
        assert t["significant"] == (t["p_value_holm"] <= 0.01)
        assert t["n_x"] == t["n_y"]
    w1 = tests["sent-weat1"]
    assert (w1["n_x"], w1["n_a"], w1["n_b"], w1["p_value_method"], w1["n_partitions"]) == (350, 215, 250, "sampled", 2000)
    w6 = tests["weat6"]  # 8 vs 8 targets: C(16, 8) = 12,870 partitions > 2,000 -> sampled
    assert w6["p_value_method"] == "sampled"
    w9 = tests["weat9"]  # 6 vs 6: C(12, 6) = 924 <= 2,000 -> exact
    assert (w9["p_value_method"], w9["n_partitions"]) == ("exact", 924)
    assert w9["p_value"] * 924 == pytest.approx(round(w9["p_value"] * 924))

    s = result["summary"]
    assert s["n_tests"] == 50 and s["n_tests_with_p_value"] == 50
    assert s["n_significant"] == sum(t["significant"] for t in tests.values())
    assert s["mean_abs_effect_size"] == pytest.approx(sum(abs(t["effect_size"]) for t in tests.values()) / 50)
    assert result["method"]["n_sentences_encoded"] == 5433  # distinct sentences over the 50 tests

    with (out / "bias_tests.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["test"] for r in rows] == list(tests)
    assert float(rows[0]["effect_size"]) == pytest.approx(tests[rows[0]["test"]]["effect_size"])
    assert "bias@base: 50 SEAT tests" in capsys.readouterr().out



def test_stage_subset_and_errors(tmp_path, params, ingested, tiny_model_dir):
    p = _params(tmp_path, params, n_samples=500, device="cpu", tests=["weat6", "weat9"])
    out = tmp_path / "m"
    stage.main(["--variant", "base", "--params", p, "--data", str(ingested),
                "--model", str(tiny_model_dir), "--out", str(out)])
    result = json.loads((out / "bias.json").read_text())
    assert list(result["tests"]) == ["weat6", "weat9"]

    bad = _params(tmp_path, params, tests=["weat99"])
    with pytest.raises(Exception, match=r"bias\.tests: no test\(s\) 'weat99'"):
        stage.main(["--variant", "base", "--params", bad, "--data", str(ingested),
                    "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(FileNotFoundError, match="seat.parquet: not found"):
        stage.main(["--variant", "base", "--params", p, "--data", str(tmp_path / "none"),
                    "--model", str(tiny_model_dir), "--out", str(tmp_path / "y")])
    with pytest.raises(Exception, match="no variant 'nope'"):
        stage.main(["--variant", "nope", "--params", p, "--data", str(ingested),
                    "--model", str(tiny_model_dir), "--out", str(tmp_path / "z")])
