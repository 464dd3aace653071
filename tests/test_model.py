"""SimCSEEncoder: poolers, the MLP head, and the exported sentence-transformers folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from simcse_ops.config import POOLERS
from simcse_ops.model import SimCSEEncoder, export_sentence_transformer, masked_mean

SENTENCES = ["A man is playing a guitar.", "Two dogs run.", "The cat sleeps on the warm red sofa today."]


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


def test_encoder_does_not_import_model():
    """model.py imports simcse_ops.encoder at module level; the reverse would be an import cycle."""
    code = "import sys, simcse_ops.encoder; assert 'simcse_ops.model' not in sys.modules, 'encoder imports model'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_exported_tokenizer_does_not_depend_on_its_last_call(tiny_model_dir, tmp_path):
    """A fast tokenizer saves the truncation / padding of its last call: after a training batch
    (32 tokens) and after a dev evaluation (padded, full length) the export must be the same file,
    set to the model's inference length (a run resumed at its end evaluates nothing before export)."""
    from transformers import AutoTokenizer

    enc = _encoder(tiny_model_dir, "avg")
    outs = []
    for i, call in enumerate([dict(truncation=True, max_length=32), dict(padding="max_length", truncation=True,
                                                                          max_length=128)]):
        tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        tok(SENTENCES, **call)
        outs.append(export_sentence_transformer(enc, tok, tmp_path / f"m{i}", base_model=str(tiny_model_dir)))
    a, b = ((o / "tokenizer.json").read_bytes() for o in outs)
    assert a == b
    saved = json.loads(a)
    assert saved["truncation"]["max_length"] == 128 and saved["padding"] is None
