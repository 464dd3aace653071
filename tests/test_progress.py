"""progress.py: throttled progress lines, on a fake clock (no test waits)."""

from __future__ import annotations

import logging

import torch

from simcse_ops.progress import Progress, duration, forward_progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "simcse_ops.progress"]


def test_at_most_one_line_per_interval(caplog):
    clock = FakeClock()
    p = Progress("train@x", 100, unit="step", interval_s=30, clock=clock)
    with caplog.at_level(logging.INFO, logger="simcse_ops.progress"):
        for _ in range(100):  # one step every 4 s: 400 s in all
            clock.now += 4
            p.update(1, loss="0.5")
    # a line at 32 s, 64 s, ... 384 s: every 8th step
    assert len(lines(caplog)) == 12
    assert lines(caplog)[0].startswith("train@x: step 8/100 (8%)")


def test_line_has_rate_elapsed_eta_and_fields():
    clock = FakeClock()
    p = Progress("train@unsup-wiki", 88, unit="step", per_item=256, rate_unit="sentences/s", clock=clock)
    clock.now += 100
    p.update(40, loss="0.1234", best_dev="82.10 (step 30)")
    # 40 steps * 256 sentences in 100 s = 102 sentences/s; ETA 48 steps * 2.5 s = 120 s
    assert p.log("checkpoint saved") == ("train@unsup-wiki: step 40/88 (45%), 102 sentences/s, elapsed 1m40s, "
                                         "ETA 2m00s, loss 0.1234, best dev 82.10 (step 30), checkpoint saved")


def test_a_resumed_run_rates_only_its_own_steps():
    clock = FakeClock()
    p = Progress("t", 100, unit="step", initial=60, clock=clock)
    clock.now += 20
    p.update(10)
    # 10 new steps in 20 s: 0.5 step/s; 30 left -> 60 s
    assert p.log() == "t: step 70/100 (70%), 0.5 step/s, elapsed 20s, ETA 1m00s"


def test_forced_lines_restart_the_interval_and_disabled_logs_nothing(caplog):
    clock = FakeClock()
    p = Progress("t", 10, clock=clock, interval_s=30)
    q = Progress("q", 10, clock=clock, interval_s=30, enabled=False)
    with caplog.at_level(logging.INFO, logger="simcse_ops.progress"):
        clock.now += 25
        p.log("dev 80.00")
        q.log("dev")
        clock.now += 10  # 35 s since the start, 10 s since the forced line
        assert p.update() is None
        clock.now += 20
        assert p.update() is not None
        q.update(5)
    assert len(lines(caplog)) == 2


def test_unknown_total_has_no_eta():
    clock = FakeClock()
    p = Progress("dedup", None, unit="rows", clock=clock)
    clock.now += 2
    p.update(500)
    assert p.log() == "dedup: rows 500, 250 rows/s, elapsed 2s"


def test_duration():
    assert [duration(s) for s in (0, 42.4, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


def test_forward_progress_counts_rows_and_leaves_outputs_alone(caplog):
    clock = FakeClock()
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(5, 3)
    expected = layer(x)
    with caplog.at_level(logging.INFO, logger="simcse_ops.progress"):
        with forward_progress(layer, "evaluate", total=15, clock=clock, interval_s=30) as p:
            for _ in range(3):
                clock.now += 20
                out = layer(x)
                assert torch.equal(out, expected)
    assert p.done == 15
    assert lines(caplog) == ["evaluate: sentences 10/15 (67%), 0.25 sentences/s, elapsed 40s, ETA 20s"]
    layer(x)  # the hook is gone
    assert p.done == 15


def test_forward_progress_counts_sentence_transformers_feature_mappings():
    from transformers import BatchEncoding

    class FeaturesOut(torch.nn.Module):  # returns a mapping, as SentenceTransformer.forward does
        def forward(self, x):
            return BatchEncoding({"sentence_embedding": x})

    clock = FakeClock()
    module = FeaturesOut()
    with forward_progress(module, "bias", total=8, clock=clock) as p:
        module(torch.zeros(3, 2))
        module(torch.zeros(5, 2))
    assert p.done == 8
