"""TSDAE: a Transformer-based sequential denoising auto-encoder (Wang, Reimers, Gurevych 2021).

The encoder maps a damaged sentence x~ (each word deleted with probability p = 0.6) to one vector
s = pool(encoder(x~)); a Transformer decoder, whose cross-attention sees only s, reconstructs the
original sentence x = (x_1..x_T) token by token:

    loss = -1/|T| sum_t log P(x_t | x_<t, s)          (cross-entropy, padding ignored)

The decoder is sentence-transformers' `DenoisingAutoEncoderLoss(model, tie_encoder_decoder=True)`:
a causal-LM copy of the encoder with cross-attention, its shared weights tied to the encoder's;
it is built from the base model's local folder (no download). Only the encoder is exported.

Noise is ours (the library's default calls NLTK's tokenizer): whitespace words, each deleted with
probability `tsdae_deletion_ratio`, at least one kept; step t's noise is drawn from
`default_rng([seed, t])`, so it does not depend on where a run was resumed.

Pooling: the base model's own (mean pooling for all-MiniLM-L6-v2); the paper used [CLS]. The
decoder reads the pooled vector before the base pipeline's Normalize (a unit vector would shrink
the decoder's only input by ~sqrt(H)); the exported model keeps Normalize, as the base has it.

The loop follows trainer.py: the variant's corpus column `text` truncated to `max_seq_length`,
epoch permutations `default_rng(seed + epoch)`, AdamW (no decay on 1-d parameters), linear warm-up
and decay, gradient clipping, the precision of `hardware.resolve_precision` (bf16 autocast where
the device multiplies bf16 natively), progress lines as trainer.py's. Model selection with a `DevScorer` every `eval_steps` and at the end: the best step is
exported. Checkpoints (`checkpoint_steps`) are checkpoint.py's `Checkpoint`, with the encoder
and decoder weights, so a killed run resumes and reproduces the uninterrupted one. One process
only (no torchrun).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize
from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss

from simcse_ops.checkpoint import (
    Checkpoint,
    clear_checkpoints,
    load_best_state,
    rng_state,
    run_fingerprint,
    save_best,
    seed_everything,
)
from simcse_ops.config import ConfigError, VariantConfig
from simcse_ops.encoder import load_sentence_transformer, pick_device
from simcse_ops.files import atomic_path
from simcse_ops.hardware import Precision, autocast, describe_device, resolve_precision
from simcse_ops.progress import Progress
from simcse_ops.sts import DevScorer
from simcse_ops.trainer import TrainResult, linear_schedule, make_optimizer, write_training_metrics
from simcse_ops.training_data import epoch_permutation, load_training_texts

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Noise


def delete_words(text: str, ratio: float, rng: np.random.Generator) -> str:
    """Delete each whitespace word with probability `ratio`; if none survives, keep one at random."""
    words = text.split()
    if not words:
        return text
    kept = [w for w, u in zip(words, rng.random(len(words)), strict=True) if u >= ratio]
    return " ".join(kept) if kept else words[int(rng.integers(len(words)))]


def noisy_batch(texts: Sequence[str], ratio: float, seed: int, step: int) -> list[str]:
    """The damaged inputs of training step `step` (0-based): reproducible from (seed, step) alone."""
    rng = np.random.default_rng([seed, step])
    return [delete_words(t, ratio, rng) for t in texts]


# --------------------------------------------------------------------------------------------
# Model


def build_tsdae(base_model: str, seed: int):
    """(exported model, DenoisingAutoEncoderLoss): the base SentenceTransformer, and the loss over
    the same modules without a final Normalize, with a tied decoder (seeded cross-attention init)."""
    full = load_sentence_transformer(base_model, device="cpu")
    encoder = SentenceTransformer(modules=[m for m in full if not isinstance(m, Normalize)], device="cpu")
    seed_everything(seed)
    loss = DenoisingAutoEncoderLoss(encoder, tie_encoder_decoder=True)
    return full, loss


def corpus_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256(b"tsdae")
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def tsdae_step(loss_fn, optimizer, scheduler, texts: list[str], noisy: list[str], tokenizer,
               cfg: VariantConfig, device: torch.device, precision: Precision = "fp32") -> float:
    """One optimisation step: reconstruct `texts` from the embeddings of `noisy`; returns the loss."""

    def features(batch: list[str]) -> dict[str, torch.Tensor]:  # (B, T), T <= max_seq_length
        enc = tokenizer(batch, padding=True, truncation=True, max_length=cfg.max_seq_length, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items()}

    with autocast(precision, device):
        loss = loss_fn([features(noisy), features(texts)], labels=None)
    loss.backward()
    if cfg.max_grad_norm and cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in loss_fn.parameters() if p.grad is not None], cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_st_embed_fn(model, loss_fn, batch_size: int):
    """Inference embeddings of the exported pipeline (the base's max_seq_length) for dev scoring."""

    def embed(sentences: list[str]) -> np.ndarray:
        was_training = loss_fn.training
        try:
            return np.asarray(model.encode(list(sentences), batch_size=batch_size, convert_to_numpy=True,
                                           show_progress_bar=False), dtype=np.float32)
        finally:
            loss_fn.train(was_training)

    return embed


# --------------------------------------------------------------------------------------------
# The loop


class _Checkpointer:
    """checkpoint.py's files for the TSDAE loop (one process): latest-only checkpoints of the
    encoder and decoder (`loss_fn`), and `best-<step>.pt` with the encoder's best weights."""

    def __init__(self, ckpt_dir: Path, fingerprint: str, cfg: VariantConfig, dev_metric: str | None) -> None:
        self.dir, self.fp, self.cfg, self.dev_metric = Path(ckpt_dir), fingerprint, cfg, dev_metric

    def load(self) -> Checkpoint | None:
        ckpt = Checkpoint.latest(self.dir, self.fp, self.dev_metric)
        if ckpt is None:
            clear_checkpoints(self.dir)
        return ckpt

    def save_best(self, step: int, score: float, model_state: dict) -> None:
        if self.cfg.checkpoint_steps:
            save_best(self.dir, step, score, model_state)

    def save(self, step: int, steps_per_epoch: int, loss_fn, optimizer, scheduler, result: TrainResult,
             train_s: float) -> None:
        Checkpoint.at_step(
            step, steps_per_epoch, fingerprint=self.fp, model=loss_fn.state_dict(),
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=[rng_state()],
            loss_curve=result.loss_curve, dev_curve=result.dev_curve, dev_metric=self.dev_metric,
            best_step=result.best_step, best_dev_score=result.best_dev_score, train_s=train_s,
            config=asdict(self.cfg),
        ).save_latest(self.dir)


def evaluate_tsdae_dev(dev: DevScorer, embed, step: int, result: TrainResult, loss_fn, ckpt: _Checkpointer,
                       selectable: bool = True) -> dict | None:
    """Score dev onto the curve; returns the encoder's weights when a selectable step beats the
    best so far (then also in `best-<step>.pt`), else None."""
    score = float(dev.score(embed))
    result.dev_curve.append({"step": step, "dev_score": round(score, 4)})
    if selectable and (result.best_dev_score is None or score > result.best_dev_score):
        result.best_dev_score, result.best_step = score, step
        best_state = {k: v.detach().cpu().clone() for k, v in loss_fn.encoder.state_dict().items()}
        ckpt.save_best(step, score, best_state)
        return best_state
    return None


def train_tsdae(
    cfg: VariantConfig,
    texts: list[str],
    model,
    loss_fn,
    *,
    ckpt_dir: Path,
    dev: DevScorer | None = None,
    dev_batch_size: int = 128,
    device: torch.device = torch.device("cpu"),
    progress: bool = True,
    precision: Precision | None = None,
    name: str = "train tsdae",
) -> tuple[TrainResult, dict | None]:
    """Train `loss_fn`'s encoder (shared with `model`) in place; returns the result and the best
    dev state dict of `loss_fn.encoder` (None: keep the final weights). `precision` None:
    `resolve_precision(cfg.precision, device)`; `name` starts each progress line.

    Step t (1-based) takes positions (t-1) mod S of epoch (t-1) // S's permutation (S steps per
    epoch, the last incomplete batch dropped) and the noise of `noisy_batch(..., seed, t - 1)`.
    """
    t_start = time.perf_counter()
    n = len(texts)
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{n} training sentences are fewer than one batch of {cfg.batch_size}; lower batch_size")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_ratio * total))
    tokenizer = loss_fn.tokenizer_encoder
    loss_fn.to(device).train()
    optimizer = make_optimizer(loss_fn, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    if precision is None:
        precision = resolve_precision(cfg.precision, device)
    result = TrainResult(steps=0, total_steps=total, epochs_run=0.0, examples=n,
                         dev_metric=dev.metric if dev is not None else None, precision=precision)
    ckpt = _Checkpointer(ckpt_dir, run_fingerprint(cfg, corpus_fingerprint(texts), 1), cfg, result.dev_metric)
    step, prior_train_s, best_state = _start(ckpt, loss_fn, optimizer, scheduler, result, cfg)
    embed = make_st_embed_fn(model, loss_fn, dev_batch_size)

    bar = Progress(name, total, unit="step", initial=step, per_item=cfg.batch_size, rate_unit="sentences/s",
                   logger=log, enabled=progress)
    bar.log(f"tsdae, {precision} on {describe_device(device)}")
    if step == 0 and dev is not None:
        evaluate_tsdae_dev(dev, embed, step, result, loss_fn, ckpt, selectable=False)  # the base, curve only
        bar.log(f"dev {result.dev_curve[-1]['dev_score']:.2f} before training")
    t_train, perm_epoch, perm = time.perf_counter(), -1, None
    while step < total:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(n, cfg.seed, epoch), epoch
        batch = [texts[i] for i in perm[position * cfg.batch_size:(position + 1) * cfg.batch_size]]
        noisy = noisy_batch(batch, cfg.tsdae_deletion_ratio, cfg.seed, step)
        lr = scheduler.get_last_lr()[0]
        loss = tsdae_step(loss_fn, optimizer, scheduler, batch, noisy, tokenizer, cfg, device, precision)
        if not math.isfinite(loss):
            raise FloatingPointError(f"tsdae loss became {loss} at step {step + 1}; lower the variant's lr")
        step += 1
        result.loss_curve.append({"step": step, "epoch": round(step / steps_per_epoch, 4),
                                  "loss": round(loss, 6), "lr": lr})
        bar.update(1, loss=f"{loss:.4f}")
        new_best = None
        if dev is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == total):
            new_best = evaluate_tsdae_dev(dev, embed, step, result, loss_fn, ckpt)
            best_state = best_state if new_best is None else new_best
            bar.fields["best_dev"] = f"{result.best_dev_score:.2f} (step {result.best_step})"
            bar.log(f"dev {result.dev_curve[-1]['dev_score']:.2f}")
        # A new best step is a checkpoint step (checkpoint.py's invariant): resume never starts before it.
        if cfg.checkpoint_steps and (new_best is not None or step % cfg.checkpoint_steps == 0 or step == total):
            ckpt.save(step, steps_per_epoch, loss_fn, optimizer, scheduler, result,
                      prior_train_s + time.perf_counter() - t_train)
            bar.log("checkpoint saved")
    bar.log("done")
    result.train_s = prior_train_s + time.perf_counter() - t_train
    result.steps, result.epochs_run = step, step / steps_per_epoch
    result.sentences_per_s = step * cfg.batch_size / result.train_s if result.train_s > 0 else 0.0
    result.wall_s = time.perf_counter() - t_start
    return result, best_state


def _start(ckpt: _Checkpointer, loss_fn, optimizer, scheduler, result: TrainResult,
           cfg: VariantConfig) -> tuple[int, float, dict | None]:
    """Resume from the latest checkpoint -> (step, train seconds so far, best state), or seed afresh."""
    state = ckpt.load()
    if state is None:
        seed_everything(cfg.seed)
        return 0, 0.0, None
    state.restore(loss_fn, optimizer, scheduler)
    result.resume_from(state)
    best = load_best_state(ckpt.dir, result.best_step) if result.best_step is not None else None
    log.info("resumed from %s at step %d", ckpt.dir, state.step)
    return state.step, float(state.train_s), best


# --------------------------------------------------------------------------------------------
# The whole job


def run_tsdae(
    cfg: VariantConfig,
    *,
    variant: str,
    data_dir: Path,
    out_dir: Path,
    metrics_dir: Path,
    ckpt_dir: Path,
    dev: DevScorer | None,
    dev_batch_size: int = 128,
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """Train a `method: tsdae` variant; write `out_dir` (sentence-transformers folder, the base
    model's inference max_seq_length and pipeline) and `metrics_dir` like `run_training`."""
    if cfg.method != "tsdae":
        raise ConfigError(f"variants.{variant}.method: {cfg.method!r} is not tsdae")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"variants.{variant}: tsdae trains in one process; run it without torchrun")
    if not 0.0 <= cfg.tsdae_deletion_ratio < 1.0:
        raise ConfigError(f"variants.{variant}.tsdae_deletion_ratio: expected a number in [0, 1), "
                          f"got {cfg.tsdae_deletion_ratio}")
    torch_device = torch.device(pick_device(device))
    precision = resolve_precision(cfg.precision, torch_device, key=f"variants.{variant}.precision")
    texts = load_training_texts(data_dir, cfg.corpus, "unsup", cfg.max_train_samples)["text"]
    model, loss_fn = build_tsdae(cfg.base_model, cfg.seed)
    result, best_state = train_tsdae(cfg, texts, model, loss_fn, ckpt_dir=Path(ckpt_dir), dev=dev,
                                     dev_batch_size=dev_batch_size, device=torch_device, progress=progress,
                                     precision=precision, name=f"train@{variant}")
    if best_state is not None:
        loss_fn.encoder.load_state_dict(best_state)
    model.to("cpu")
    with atomic_path(Path(out_dir)) as tmp:
        model.save(str(tmp), safe_serialization=True)
    write_training_metrics(metrics_dir, result, variant=variant, method=cfg.method,
                           exported_best=best_state is not None, world_size=1, device=torch_device)
    return result
