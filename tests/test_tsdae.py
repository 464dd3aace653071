"""TSDAE: the word-deletion noise, a stage run with the tiny BERT (decoder built offline), resume."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from simcse_ops.tsdae import delete_words, noisy_batch
from tests.test_trainer import _stage_cmd, read_curve, write_data, write_params

TSDAE_VARIANT = {"method": "tsdae", "corpus": ["wiki1m"], "batch_size": 16, "max_steps": 9, "eval_steps": 4,
                 "checkpoint_steps": 3, "lr": 1e-3}


def test_noise_deletes_the_ratio_of_words_deterministically():
    text = " ".join(f"w{i}" for i in range(2000))
    a, b = noisy_batch([text], 0.6, seed=42, step=3), noisy_batch([text], 0.6, seed=42, step=3)
    assert a == b
    kept = a[0].split()
    assert 0.37 < len(kept) / 2000 < 0.43  # ~60 % deleted
    assert kept == [w for w in text.split() if w in set(kept)]  # order kept, nothing invented
    assert noisy_batch([text], 0.6, seed=42, step=4) != a and noisy_batch([text], 0.6, seed=7, step=3) != a


def test_noise_keeps_at_least_one_word():
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = delete_words("one two", 0.999, rng)
        assert out in ("one", "two")
    assert delete_words("", 0.6, rng) == ""
    assert delete_words("a b c", 0.0, rng) == "a b c"


def _run_stage(params, data, out, project_root, monkeypatch):
    from stages.train import main

    monkeypatch.chdir(project_root)
    main(_stage_cmd(params, "toy-tsdae", data, out)[3:])


def test_tsdae_stage_trains_and_exports_a_loadable_model(tmp_path, tiny_model_dir, project_root, monkeypatch):
    import torch
    from sentence_transformers import SentenceTransformer

    from simcse_ops.model import _base_st_info

    torch.set_num_threads(1)
    data = write_data(tmp_path / "data")
    params = write_params(tmp_path / "params.yaml", project_root, "toy-tsdae", **TSDAE_VARIANT,
                          base_model=str(tiny_model_dir))
    out = tmp_path / "run"
    _run_stage(params, data, out, project_root, monkeypatch)

    metrics = yaml.safe_load((out / "metrics" / "train.json").read_text())
    assert metrics["method"] == "tsdae" and metrics["steps"] == 9
    assert metrics["dev_metric"] == "stsb_dev_spearman" and metrics["best_step"] in (4, 8, 9)
    losses = [float(r["loss"]) for r in read_curve(out / "metrics" / "loss.csv")]
    assert len(losses) == 9 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # reconstruction improves (ln(vocab) ~ 10.3 at the start)
    assert [r["step"] for r in read_curve(out / "metrics" / "dev.csv")] == ["0", "4", "8", "9"]
    st = SentenceTransformer(str(out / "model"), device="cpu")
    assert st.max_seq_length == _base_st_info(str(tiny_model_dir))[0]
    assert st.encode(["a cat sleeps.", "the dog runs."]).shape == (2, 32)
    assert not list((out / "model").rglob("*.bin"))


@pytest.mark.slow
def test_interrupted_tsdae_run_resumes_to_the_same_curve_and_weights(tmp_path, tiny_model_dir, project_root,
                                                                      monkeypatch):
    """A run stopped after step 5 resumes from its step-4 checkpoint (step 4, the first selectable
    dev step, is a best step, so a checkpoint step off the every-3 schedule) and reproduces the
    whole run."""
    import torch

    import simcse_ops.tsdae as tsdae

    torch.set_num_threads(1)
    data = write_data(tmp_path / "data")
    params = write_params(tmp_path / "params.yaml", project_root, "toy-tsdae", **TSDAE_VARIANT,
                          base_model=str(tiny_model_dir))
    full, broken = tmp_path / "full", tmp_path / "broken"
    _run_stage(params, data, full, project_root, monkeypatch)

    real_step, calls = tsdae.tsdae_step, []

    def dies_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tsdae, "tsdae_step", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        _run_stage(params, data, broken, project_root, monkeypatch)
    monkeypatch.setattr(tsdae, "tsdae_step", real_step)
    assert sorted(p.name for p in (broken / "ckpt").glob("*.pt")) == ["best-00000004.pt", "checkpoint-00000004.pt"]
    _run_stage(params, data, broken, project_root, monkeypatch)

    resumed = yaml.safe_load((broken / "metrics" / "train.json").read_text())
    assert resumed["resumed_from_step"] == 4
    assert read_curve(full / "metrics" / "loss.csv") == read_curve(broken / "metrics" / "loss.csv")
    assert read_curve(full / "metrics" / "dev.csv") == read_curve(broken / "metrics" / "dev.csv")
    assert (full / "model" / "model.safetensors").read_bytes() == (broken / "model" / "model.safetensors").read_bytes()
