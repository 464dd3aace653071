"""FastDropout (simcse_ops.fast_dropout): the mask statistics, its gradient, the module swap, and
the attention function built on transformers internals, guarded and falling back safely.

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

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import simcse_ops.fast_dropout as fd_mod
from simcse_ops.fast_dropout import (
    FAST_ATTENTION,
    FastDropout,
    _fast_dropout_attention,
    fast_attention_supported,
    fast_dropout,
    register_fast_attention,
    restore_attention,
    use_fast_attention_dropout,
    use_fast_dropout,
)
from simcse_ops.model import SimCSEEncoder, export_sentence_transformer
from tests.test_model import _batch, _encoder

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "The cat sleeps on the warm red sofa today."]


def _version() -> str:
    return importlib.import_module("transformers").__version__


def _fail_message(reason: str) -> str:
    return (f"{reason}; update simcse_ops/fast_dropout.py's fast attention (fast_attention_supported, "
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
    real = fd_mod.fast_dropout

    def spy(x, p):
        calls.append(tuple(x.shape))
        return real(x, p)

    previous = use_fast_attention_dropout(backbone)
    assert previous == "sdpa" and backbone.config._attn_implementation == FAST_ATTENTION
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fd_mod, "fast_dropout", spy)
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
    obj = importlib.import_module(module)  # the module object transformers and fast_dropout.py see now
    getattr(obj, attr)  # materialise a lazily imported attribute before patching it
    if replacement == "DELETE":
        monkeypatch.delattr(obj, attr)
    else:
        monkeypatch.setattr(obj, attr, replacement)
    monkeypatch.setattr(fd_mod, "_fallback_warned", set())
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

    monkeypatch.setattr(fd_mod, "fast_dropout", no_fast_dropout)
    # Attention dropout only (no hidden dropout): any randomness below is torch's SDPA dropout.
    encoders = [SimCSEEncoder(_backbone(tiny_model_dir, hidden_dropout_prob=0.0), pooler="avg") for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="simcse_ops.fast_dropout"):
        previous = [use_fast_attention_dropout(enc.backbone) for enc in encoders]  # must not raise
    assert previous == [None, None]
    assert all(enc.backbone.config._attn_implementation == "sdpa" for enc in encoders)
    warnings = [r for r in caplog.records if r.name == "simcse_ops.fast_dropout" and r.levelno == logging.WARNING]
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


# --- FastDropout itself, and on an encoder --------------------------------------------------

def test_fast_dropout_keeps_one_minus_p_and_scales():
    torch.manual_seed(0)
    drop = FastDropout(0.1).train()
    x = torch.ones(400_000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.003  # binomial sd 0.0005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.004  # inverted dropout keeps the expectation
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # drawn from torch's seeded generator: replayable
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_fast_dropout_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    y = FastDropout(0.25).train()(x)
    y.sum().backward()
    expected = (y.detach() != 0).float() / 0.75
    assert torch.allclose(x.grad, expected)


def test_use_fast_dropout_swaps_every_dropout_and_keeps_the_weights(tiny_model_dir, tokenizer):
    enc = _encoder(tiny_model_dir, "avg")
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ids, mask = _batch(tokenizer)
    ref = enc(ids, mask)
    n = use_fast_dropout(enc)
    assert n > 0 and not any(type(m) is torch.nn.Dropout for m in enc.modules())
    assert enc.state_dict().keys() == before.keys()
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in before.items())
    torch.testing.assert_close(enc(ids, mask), ref)  # eval mode: no dropout either way
    enc.train()
    torch.manual_seed(0)
    a = enc(ids, mask)
    torch.manual_seed(0)
    assert torch.equal(enc(ids, mask), a) and not torch.allclose(a, ref)  # dropout active, seeded


def test_fast_attention_matches_sdpa_without_dropout_and_replays_its_mask(tiny_model_dir, tokenizer):
    enc = _encoder(tiny_model_dir, "avg")
    ids, mask = _batch(tokenizer)
    ref = enc(ids, mask)
    previous = use_fast_attention_dropout(enc.backbone)
    assert previous == "sdpa" and enc.backbone.config._attn_implementation == FAST_ATTENTION
    torch.testing.assert_close(enc(ids, mask), ref)  # eval: delegated to SDPA

    # Training with dropout: softmax(q k^T s + mask) with fast_dropout's mask, then times v.
    layer = enc.backbone.encoder.layer[0].attention.self
    layer.train()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=g) for _ in range(3))
    keep = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    keep[0, ..., 5:] = False  # padding keys of the first row
    torch.manual_seed(5)
    out, _ = _fast_dropout_attention(layer, q, k, v, keep, dropout=0.2, scaling=0.3)
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.3).masked_fill(~keep, torch.finfo(q.dtype).min), dim=-1)
    torch.manual_seed(5)
    expected = (fast_dropout(probs, 0.2) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert (out[0] != 0).any() and out.shape == (3, 7, 2, 8)
    # no dropout: exactly SDPA's function
    torch.testing.assert_close(_fast_dropout_attention(layer, q, k, v, keep, dropout=0.0, scaling=0.3)[0],
                               torch.nn.functional.scaled_dot_product_attention(q, k, v, keep, scale=0.3).transpose(1, 2))
    restore_attention(enc.backbone, previous)
    assert enc.backbone.config._attn_implementation == "sdpa"


def test_export_never_saves_the_training_attention(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    enc = _encoder(tiny_model_dir, "avg")
    assert use_fast_attention_dropout(enc.backbone) == "sdpa"
    out = export_sentence_transformer(enc, AutoTokenizer.from_pretrained(str(tiny_model_dir)), tmp_path / "m",
                                      base_model=str(tiny_model_dir))
    assert FAST_ATTENTION not in (out / "config.json").read_text()
