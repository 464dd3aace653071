"""SimCSE's contrastive objective (InfoNCE with in-batch negatives).

For anchors h_i, positives h_i^+ and optional hard negatives h_i^- (i = 1..B), with cosine
similarity sim and temperature tau (Gao et al. 2021, eq. 1 and 5):

    logits_ij = sim(h_i, c_j) / tau,    c = [h_1^+ .. h_B^+, h_1^- .. h_B^-]    (B, B) or (B, 2B)
    logits_i,B+i += w                   w = hard_negative_weight (log of the weight; 0 = plain)
    loss = mean_i CrossEntropy(logits_i, target = i)

This is sentence-transformers' `MultipleNegativesRankingLoss(scale=1/tau)` (the test proves equal
loss and gradients); SimCSE's `hard_negative_weight` adds w to each anchor's own hard-negative
logit, i.e. multiplies that negative's exp-term by e^w in the softmax denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def similarity_logits(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.05,
    hard_negative_weight: float = 0.0,
) -> Tensor:
    """Scaled cosine logits (B, B) or (B, 2B); computed in float32 whatever the input dtype."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    a = F.normalize(anchors.float(), p=2, dim=-1)  # (B, H)
    cands = positives if negatives is None else torch.cat([positives, negatives], dim=0)
    c = F.normalize(cands.float(), p=2, dim=-1)  # (B or 2B, H)
    logits = a @ c.T / temperature
    if negatives is not None and hard_negative_weight != 0.0:
        b = anchors.size(0)
        bonus = torch.zeros_like(logits)
        bonus[:, b:] = torch.eye(b, device=logits.device, dtype=logits.dtype) * hard_negative_weight
        logits = logits + bonus
    return logits


def info_nce(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.05,
    hard_negative_weight: float = 0.0,
) -> Tensor:
    """Mean InfoNCE loss over the batch; row i's target is column i (its own positive)."""
    logits = similarity_logits(anchors, positives, negatives, temperature, hard_negative_weight)
    labels = torch.arange(logits.size(0), device=logits.device)
    return F.cross_entropy(logits, labels)
