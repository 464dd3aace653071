"""Bias-probe readers on the real files: 46 + 4 SEAT tests, 1,508 CrowS-Pairs."""

from __future__ import annotations

from simcse_ops.schemas import CROWS_PAIRS, SEAT


def test_seat_tests(real_source):
    result = real_source("seat")
    assert result.table.schema.equals(SEAT)
    rows = result.table.to_pylist()
    tests = {r["test"] for r in rows}
    assert len(tests) == 46 + 4
    assert {"sent-weat1", "weat1", "sent-religion1", "sent-religion2b"} <= tests
    weat1 = [r for r in rows if r["test"] == "sent-weat1"]
    sizes = {s: sum(r["set"] == s for r in weat1) for s in ("targ1", "targ2", "attr1", "attr2")}
    assert sizes == {"targ1": 350, "targ2": 350, "attr1": 215, "attr2": 250}
    assert {r["category"] for r in weat1} == {"Flowers", "Insects", "Pleasant", "Unpleasant"}
    first = weat1[0]
    assert first["text"] == "This is an aster." and first["line"] == 5


def test_crows_pairs(real_source):
    result = real_source("crows_pairs")
    assert result.table.schema.equals(CROWS_PAIRS)
    m = result.metrics()
    assert m["rows"] == 1508
    assert m["bias_types"] == {"race-color": 516, "gender": 262, "socioeconomic": 172,
                               "nationality": 159, "religion": 105, "age": 87,
                               "sexual-orientation": 84, "physical-appearance": 63,
                               "disability": 60}
    rows = result.table.to_pylist()
    assert sum(r["stereo_antistereo"] == "stereo" for r in rows) == 1290
    assert rows[0]["line"] == 2
