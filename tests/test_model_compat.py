"""model.py's use of transformers internals (FAST_ATTENTION) is guarded, and falls back safely.

`FAST_ATTENTION` registers an attention function built on transformers internals
(`integrations.sdpa_attention.sdpa_attention_forward`, `masking_utils.sdpa_mask`,
`AttentionInterface`, `AttentionMaskInterface`). `fast_attention_supported()` checks them; when
they changed, `use_fast_attention_dropout` warns once and keeps `sdpa` (torch's native attention
dropout) instead of breaking training. The first tests fail loudly when the installed
transformers changed them, so that the change is seen in CI rather than as a slower run.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import simcse_ops.model as model_mod
from simcse_ops.model import (
    FAST_ATTENTION,
    SimCSEEncoder,
    fast_attention_supported,
    register_fast_attention,
    restore_attention,
    use_fast_attention_dropout,
)

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "The cat sleeps on the warm red sofa today."]


def _version() -> str:
    return importlib.import_module("transformers").__version__


def _fail_message(reason: str) -> str:
    return (f"{reason}; update simcse_ops/model.py's fast attention (fast_attention_supported, "
            f"_fast_dropout_attention) or pin transformers<{_version()}")


@pytest.fixture(scope="module")
def batch(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _backbone(tiny_model_dir, **config):
    torch.manual_seed(0)
    return AutoModel.from_pretrained(str(tiny_model_dir), **config)


# --- (a) the installed transformers has the internals FAST_ATTENTION relies on ---------------

def test_installed_transformers_supports_fast_attention():
    ok, reason = fast_attention_supported()
    if not ok:
        pytest.fail(_fail_message(reason), pytrace=False)
    assert reason == ""


def test_transformers_calls_the_fast_attention_as_it_calls_sdpa(tiny_model_dir, batch):
    """End to end through BERT: transformers passes our function the same arguments (and masks) as
    SDPA's and reads its output the same way. With attention dropout p = 1e-9 FastDropout keeps
    every element (its threshold rounds to 0) and torch's SDPA keeps them all too, so a training
    forward pass must agree with `sdpa` while running `_fast_dropout_attention`'s own path."""
    ok, reason = fast_attention_supported()
    if not ok:
        pytest.fail(_fail_message(reason), pytrace=False)
    ids, mask = batch
    backbone = _backbone(tiny_model_dir, attention_probs_dropout_prob=1e-9, hidden_dropout_prob=0.0).train()
    assert backbone.config._attn_implementation == "sdpa"
    ref = backbone(input_ids=ids, attention_mask=mask).last_hidden_state

    calls = []
    real = model_mod.fast_dropout

    def spy(x, p):
        calls.append(tuple(x.shape))
        return real(x, p)

    previous = use_fast_attention_dropout(backbone)
    assert previous == "sdpa" and backbone.config._attn_implementation == FAST_ATTENTION
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(model_mod, "fast_dropout", spy)
            out = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        restore_attention(backbone, previous)
    n, t = ids.shape
    heads = backbone.config.num_attention_heads
    assert calls == [(n, heads, t, t)] * backbone.config.num_hidden_layers, \
        _fail_message(f"transformers {_version()} changed how attention functions are called: "
                      f"FastDropout saw probabilities of shapes {calls}")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5,
                               msg=lambda m: _fail_message(f"transformers {_version()} changed the "
                                                           f"attention-function contract (masks or output layout): {m}"))


# --- (b) internals changed: a warning and torch's native dropout, never an error --------------

def _changed_forward(module, query, key, value, attention_mask, is_causal, dropout=0.0, scaling=None, **kwargs):
    raise AssertionError("never called")


def _other_mask(*args, **kwargs):
    raise AssertionError("never called")


SDPA = "transformers.integrations.sdpa_attention"
BREAKAGES = {
    # name: (module, attribute, replacement or DELETE, what the reason names)
    "sdpa_forward_removed": (SDPA, "sdpa_attention_forward", "DELETE", "sdpa_attention_forward"),
    "sdpa_forward_new_required_param": (SDPA, "sdpa_attention_forward", _changed_forward, "sdpa_attention_forward"),
    "sdpa_forward_renamed_params": (SDPA, "sdpa_attention_forward",
                                    lambda module, q, k, v, mask, dropout=0.0, scaling=None, **kw: None,
                                    "sdpa_attention_forward"),
    "sdpa_mask_replaced": ("transformers.masking_utils", "sdpa_mask", _other_mask, "sdpa_mask"),
    "mask_interface_removed": ("transformers", "AttentionMaskInterface", None, "AttentionMaskInterface"),
    "attention_interface_register_changed": ("transformers", "AttentionInterface",
                                             type("AttentionInterface", (), {"register": staticmethod(
                                                 lambda name, function: None)}),
                                             "AttentionInterface.register"),
}


@pytest.fixture(params=sorted(BREAKAGES))
def broken_internals(request, monkeypatch):
    module, attr, replacement, named = BREAKAGES[request.param]
    obj = importlib.import_module(module)  # the module object transformers and model.py see now
    getattr(obj, attr)  # materialise a lazily imported attribute before patching it
    if replacement == "DELETE":
        monkeypatch.delattr(obj, attr)
    else:
        monkeypatch.setattr(obj, attr, replacement)
    monkeypatch.setattr(model_mod, "_fallback_warned", set())
    return named


def test_guard_reports_the_changed_internal(broken_internals):
    ok, reason = fast_attention_supported()
    assert not ok
    assert reason.startswith(f"transformers {_version()} changed ") and broken_internals in reason
    with pytest.raises(RuntimeError, match="cannot register"):
        register_fast_attention()


def test_fallback_keeps_sdpa_and_trains_with_native_dropout(broken_internals, tiny_model_dir, batch, caplog,
                                                            monkeypatch):
    ids, mask = batch

    def no_fast_dropout(x, p):
        raise AssertionError("the fast attention path ran although the internals changed")

    monkeypatch.setattr(model_mod, "fast_dropout", no_fast_dropout)
    # Attention dropout only (no hidden dropout): any randomness below is torch's SDPA dropout.
    encoders = [SimCSEEncoder(_backbone(tiny_model_dir, hidden_dropout_prob=0.0), pooler="avg") for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="simcse_ops.model"):
        previous = [use_fast_attention_dropout(enc.backbone) for enc in encoders]  # must not raise
    assert previous == [None, None]
    assert all(enc.backbone.config._attn_implementation == "sdpa" for enc in encoders)
    warnings = [r for r in caplog.records if r.name == "simcse_ops.model" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, "the fallback warning is logged once"
    assert broken_internals in warnings[0].getMessage() and "native" in warnings[0].getMessage()
    restore_attention(encoders[0].backbone, previous[0])  # None: a no-op, as trainer.py calls it

    enc = encoders[0]
    with torch.no_grad():
        ref = enc.eval()(ids, mask)
    enc.train()
    torch.manual_seed(1)
    a = enc(ids, mask)
    torch.manual_seed(2)
    b = enc(ids, mask)
    torch.manual_seed(1)
    assert torch.equal(enc(ids, mask), a), "native dropout replays from the seed"
    assert torch.isfinite(a).all() and not torch.equal(a, b) and not torch.allclose(a, ref), \
        "attention dropout is active in training"
    a.sum().backward()
    assert enc.backbone.embeddings.word_embeddings.weight.grad is not None


def test_encoder_does_not_import_model():
    """model.py imports simcse_ops.encoder at module level; the reverse would be an import cycle."""
    code = "import sys, simcse_ops.encoder; assert 'simcse_ops.model' not in sys.modules, 'encoder imports model'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
