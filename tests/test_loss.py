"""InfoNCE: equal loss and gradients to sentence-transformers' MultipleNegativesRankingLoss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from simcse_ops.loss import info_nce, similarity_logits


class _Precomputed(torch.nn.Module):
    """Stands in for a SentenceTransformer: MNRL only needs a module to hold."""


def _st_loss(temperature: float):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    return MultipleNegativesRankingLoss(_Precomputed(), scale=1.0 / temperature)


def _embeddings(b: int, h: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, generator=g, dtype=torch.float64) for _ in range(n)]


@pytest.mark.parametrize("n_cols", [2, 3])
@pytest.mark.parametrize("temperature", [0.05, 0.1])
def test_matches_sentence_transformers_loss_and_gradients(n_cols, temperature):
    base = _embeddings(16, 24, n_cols, seed=n_cols)
    ours = [t.clone().requires_grad_(True) for t in base]
    theirs = [t.clone().requires_grad_(True) for t in base]

    loss = info_nce(ours[0], ours[1], ours[2] if n_cols == 3 else None, temperature=temperature)
    ref = _st_loss(temperature).compute_loss_from_embeddings(theirs, labels=None)
    loss.backward()
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-6)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad.to(a.grad.dtype), rtol=1e-5, atol=1e-6)
    assert all(a.grad.abs().sum() > 0 for a in ours)


def test_hand_computed_two_pairs():
    # Orthogonal unit vectors: cos(a_i, p_i) = 1, cos(a_i, p_j) = 0.
    a = torch.eye(2)
    tau = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert info_nce(a, a.clone(), temperature=tau).item() == pytest.approx(expected, rel=1e-6)


def test_hard_negative_weight_adds_log_weight_to_own_negative_only():
    a, p, n = _embeddings(4, 8, 3, seed=7)
    tau, w = 0.05, math.log(2.0)
    plain = similarity_logits(a, p, n, tau)
    weighted = similarity_logits(a, p, n, tau, hard_negative_weight=w)
    diff = (weighted - plain).double()
    expected = torch.zeros(4, 8, dtype=torch.float64)
    expected[:, 4:] = torch.eye(4, dtype=torch.float64) * w
    torch.testing.assert_close(diff, expected, rtol=0, atol=1e-5)
    # ... i.e. the own hard negative counts twice in the softmax denominator.
    logits = plain.double()
    denom = logits.exp().sum(1) + logits[:, 4:].diagonal().exp()
    manual = -(logits.diagonal() - denom.log()).mean()
    assert info_nce(a, p, n, tau, w).item() == pytest.approx(manual.item(), rel=1e-5)


def test_loss_is_computed_in_float32_for_bf16_embeddings():
    a, p = (t.to(torch.bfloat16) for t in _embeddings(8, 16, 2, seed=3))
    assert info_nce(a, p).dtype == torch.float32


def test_rejects_nonpositive_temperature():
    a, p = _embeddings(2, 4, 2, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(a, p, temperature=0.0)


def test_perfect_alignment_gives_low_loss():
    a = F.normalize(torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert info_nce(a, a.clone()).item() < 0.5
