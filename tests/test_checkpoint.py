"""Checkpoint files: the dataclass round trip, atomic writes, which checkpoint resumes a run, RNG state."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from simcse_ops.checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    checkpoint_files,
    clear_checkpoints,
    load_best_state,
    rng_state,
    save_best,
    set_rng_state,
)


def _checkpoint(step: int = 7, fingerprint: str = "fp", **over) -> Checkpoint:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    fields = dict(fingerprint=fingerprint, model=model.state_dict(), optimizer=opt.state_dict(),
                  scheduler=sched.state_dict(), rng=[rng_state()], loss_curve=[{"step": 1, "loss": 2.0}],
                  dev_curve=[{"step": 0, "dev_score": 1.5}], dev_metric="toy_dev", best_step=None,
                  best_dev_score=None, train_s=3.5, config={"lr": 0.1})
    fields.update(over)
    return Checkpoint.at_step(step, 5, **fields)


def test_save_then_load_gives_the_same_checkpoint_with_the_file_keys_of_format_1(tmp_path):
    ckpt = _checkpoint()
    assert (ckpt.epoch, ckpt.position, ckpt.format) == (1, 2, CHECKPOINT_FORMAT)
    path = tmp_path / "c.pt"
    ckpt.save(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert list(raw) == ["format", "fingerprint", "step", "epoch", "position", "model", "optimizer", "scheduler",
                         "rng", "loss_curve", "dev_curve", "dev_metric", "best_step", "best_dev_score", "train_s",
                         "config"]
    back = Checkpoint.load(path)
    for name, value in ckpt.to_dict().items():
        assert _same(getattr(back, name), value), name


def _same(a, b) -> bool:
    """Deep equality through dicts, lists and tuples of tensors, arrays and plain values."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    _checkpoint(step=5).save(path)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint(step=10).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_latest_resumes_only_the_same_run_and_metric(tmp_path):
    assert Checkpoint.latest(tmp_path / "none", "fp") is None
    _checkpoint(step=5).save_latest(tmp_path)
    _checkpoint(step=10, best_step=10, best_dev_score=2.0).save_latest(tmp_path)
    assert [p.name for p in checkpoint_files(tmp_path)] == ["checkpoint-00000010.pt"]  # the latest only
    assert Checkpoint.latest(tmp_path, "fp", "toy_dev").step == 10
    assert Checkpoint.latest(tmp_path, "other", "toy_dev") is None
    assert Checkpoint.latest(tmp_path, "fp", "another_metric") is None
    _checkpoint(step=12, format=CHECKPOINT_FORMAT + 1).save_latest(tmp_path)
    assert Checkpoint.latest(tmp_path, "fp") is None  # another format is ignored, not misread


def test_a_checkpoint_written_before_pluggable_dev_metrics_reads_as_stsb(tmp_path):
    raw = _checkpoint(best_step=5).to_dict()
    del raw["dev_metric"], raw["best_dev_score"], raw["train_s"]
    raw["best_dev_spearman"] = 80.0
    raw["dev_curve"] = [{"step": 5, "stsb_dev_spearman": 80.0}]
    torch.save(raw, tmp_path / "checkpoint-00000007.pt")
    assert Checkpoint.latest(tmp_path, "fp", "toy_dev") is None
    old = Checkpoint.latest(tmp_path, "fp", "stsb_dev_spearman")
    assert old.best_dev_score == 80.0 and old.dev_curve == [{"step": 5, "dev_score": 80.0}]
    assert old.dev_metric == "stsb_dev_spearman" and old.train_s == 0.0


def test_best_state_and_clearing(tmp_path):
    save_best(tmp_path, 4, 1.0, {"w": torch.ones(2)})
    assert torch.equal(load_best_state(tmp_path, 4)["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="best-00000008.pt is missing"):
        load_best_state(tmp_path, 8)
    _checkpoint().save_latest(tmp_path)
    clear_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []
    clear_checkpoints(tmp_path / "missing")  # no folder: nothing to do


def test_a_checkpoint_keeps_only_the_best_file_it_names(tmp_path):
    """save_latest deletes older checkpoints and every best file but its own best step's, after
    writing itself; a best file newer than the checkpoint is deleted by the next checkpoint."""
    save_best(tmp_path, 2, 1.0, {"w": torch.ones(2)})
    _checkpoint(step=3, best_step=2).save_latest(tmp_path)
    save_best(tmp_path, 4, 2.0, {"w": torch.zeros(2)})  # killed here: checkpoint 3 still finds best 2
    assert torch.equal(load_best_state(tmp_path, 2)["w"], torch.ones(2))
    _checkpoint(step=4, best_step=4).save_latest(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-00000004.pt", "checkpoint-00000004.pt"]
    _checkpoint(step=5, best_step=None).save_latest(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000005.pt"]


def test_a_folder_written_before_best_files_named_by_step_reads_best_pt(tmp_path):
    torch.save({"step": 4, "score": 1.0, "model": {"w": torch.ones(2)}}, tmp_path / "best.pt")
    assert torch.equal(load_best_state(tmp_path, 4)["w"], torch.ones(2))
    with pytest.raises(RuntimeError, match="best.pt is from step 4"):
        load_best_state(tmp_path, 8)
    clear_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rng_state_round_trip_replays_the_same_draws():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
