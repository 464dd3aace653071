"""SimCSEEncoder: poolers, the MLP head, and the exported sentence-transformers folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simcse_ops.config import POOLERS
from simcse_ops.model import (
    FAST_ATTENTION,
    FastDropout,
    fast_dropout,
    restore_attention,
    use_fast_attention_dropout,
    SimCSEEncoder,
    export_sentence_transformer,
    masked_mean,
    use_fast_dropout,
)

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "The cat sleeps on the warm red sofa today."]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _batch(tokenizer, max_length=64):
    enc = tokenizer(SENTENCES, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _encoder(tiny_model_dir, pooler, mlp=True, mlp_only_train=True):
    torch.manual_seed(0)
    return SimCSEEncoder.from_pretrained(str(tiny_model_dir), pooler=pooler, mlp=mlp, mlp_only_train=mlp_only_train).eval()


@pytest.mark.parametrize("pooler", POOLERS)
def test_poolers_match_their_definitions(tiny_model_dir, tokenizer, pooler):
    enc = _encoder(tiny_model_dir, pooler, mlp=False)
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        out = enc.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states
        m = mask.unsqueeze(-1).float()
        mean = lambda h: (h * m).sum(1) / m.sum(1)  # noqa: E731
        expected = {
            "cls": hs[-1][:, 0],
            "cls_before_pooler": hs[-1][:, 0],
            "avg": mean(hs[-1]),
            "avg_first_last": (mean(hs[1]) + mean(hs[-1])) / 2,
            "avg_top2": (mean(hs[-2]) + mean(hs[-1])) / 2,
        }[pooler]
        torch.testing.assert_close(enc(ids, mask), expected, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_avg(tiny_model_dir, tokenizer):
    enc = _encoder(tiny_model_dir, "avg")
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        alone = [enc.embed(*(t[i:i + 1, : int(mask[i].sum())] for t in (ids, mask))) for i in range(len(SENTENCES))]
        together = enc.embed(ids, mask)
    torch.testing.assert_close(torch.cat(alone), together, rtol=1e-4, atol=1e-5)


def test_mlp_head_used_in_training_and_dropped_for_inference(tiny_model_dir, tokenizer):
    enc = _encoder(tiny_model_dir, "avg", mlp=True, mlp_only_train=True)
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        pooled = masked_mean(enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        torch.testing.assert_close(enc(ids, mask), torch.tanh(enc.mlp.dense(pooled)))
        torch.testing.assert_close(enc.embed(ids, mask), pooled)
    kept = _encoder(tiny_model_dir, "avg", mlp=True, mlp_only_train=False)
    with torch.no_grad():
        torch.testing.assert_close(kept.embed(ids, mask), kept(ids, mask))
    assert _encoder(tiny_model_dir, "cls_before_pooler", mlp=True).mlp is None


def test_unknown_pooler_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown pooler 'max'"):
        _encoder(tiny_model_dir, "max")


@pytest.mark.parametrize(
    "pooler,mlp_only_train",
    [("avg", True), ("cls", False), ("avg_first_last", True), ("avg_top2", True), ("cls_before_pooler", True)],
)
def test_export_loads_in_sentence_transformers_and_automodel(tiny_model_dir, tokenizer, tmp_path, pooler, mlp_only_train):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    enc = _encoder(tiny_model_dir, pooler, mlp=True, mlp_only_train=mlp_only_train)
    with torch.no_grad():  # make the head non-trivial so dropping or keeping it shows
        enc.backbone.embeddings.word_embeddings.weight.mul_(3.0)
    out = export_sentence_transformer(enc, tokenizer, tmp_path / "model", base_model=str(tiny_model_dir))

    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]

    st = SentenceTransformer(str(out), device="cpu")
    # The base model's own inference length (the tiny BERT's 128 positions), not the training 32.
    assert st.max_seq_length == 128
    got = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    ids, mask = _batch(tokenizer, max_length=128)
    with torch.no_grad():
        expected = enc.embed(ids, mask).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    auto = AutoModel.from_pretrained(str(out))
    with torch.no_grad():
        h = auto(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(h, enc.backbone(input_ids=ids, attention_mask=mask).last_hidden_state)
    info = json.loads((out / "simcse_export.json").read_text())
    assert info["mlp_in_inference"] == (not mlp_only_train and pooler != "cls_before_pooler")


@pytest.mark.slow
def test_default_encoder_export_keeps_256_tokens_and_normalize(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from simcse_ops.encoder import default_model_path, load_sentence_transformer

    enc = SimCSEEncoder.from_pretrained("default", pooler="avg").eval()
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    out = export_sentence_transformer(enc, tok, tmp_path / "m", base_model="default")
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 256
    ref = load_sentence_transformer("default", device="cpu")
    np.testing.assert_allclose(st.encode(SENTENCES), ref.encode(SENTENCES), rtol=1e-4, atol=1e-5)


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
    from simcse_ops.model import _fast_dropout_attention

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
