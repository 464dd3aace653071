"""The contrastive training loop: SimCSE unsupervised (dropout positives) and supervised (NLI
triples), and InfoNCE on unlabelled positive pairs.

One step on a global batch of B examples (Gao et al. 2021):

    unsup: rows [x_1..x_B, x_1..x_B] in ONE forward pass, so the two copies get independent
           dropout masks; z1 = out[:B], z2 = out[B:]; loss = InfoNCE(z1, z2)             (B, B)
    sup:   rows [anchor_1..B, positive_1..B, negative_1..B] in one forward pass;
           loss = InfoNCE(z1, z2, hard negatives z3)                                      (B, 2B)
    pairs: rows [anchor_1..B, positive_1..B] (a `text_pairs` source) in one forward pass;
           loss = InfoNCE(z1, z2): sup's code path without hard negatives                (B, B)

Model selection: a `DevScorer` (sts.py; STS-B dev Spearman by default) scores the model every
`eval_steps` and at the end; the best step is exported.

AdamW (fused kernel; no decay on 1-d parameters: biases and norms), linear warm-up then linear
decay to 0, gradient clipping. Precision: `hardware.resolve_precision` (bf16 autocast where the
GPU or CPU multiplies bf16 natively, else fp32), for the steps and the dev evaluations alike. Text
is tokenised once, ahead of time, truncated to `max_seq_length` (32 by default).

Progress: a `progress.Progress` line at most every 30 s and at each dev evaluation and checkpoint
(step/total, sentences/s, elapsed, ETA, last loss, best dev score).

Less padding: the step's rows are sorted by length and encoded in `length_groups` forward passes,
each padded to its own longest row (`encode_rows`). The encoder maps every row independently
(padding is masked out), so the embeddings, the loss over the whole batch and its in-batch
negatives are those of one padded pass; only the compute spent on padding tokens is saved
(31 % of the tokens of a random wiki1m batch at length 32). Dropout masks come from `FastDropout`
on CPU (`dropout_impl`), which draws 4 mask elements per 64-bit random number, for the dropout
modules and, through a registered attention function, for the attention probabilities.

Under torchrun each rank encodes its slice of the global batch, embeddings are gathered with the
local slice keeping its gradient, and gradients are summed across ranks (`distributed.py`), so the
loss and update equal a single process's on the same global batch.

Data order, checkpoints and resume: checkpoint.py. Parquet, tokenising and padding:
training_data.py. Here: the step (`train_step`), the loop (`train`, whose run state is a
`LoopState` handed to `evaluate_and_checkpoint`), and the whole job (`run_training`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from simcse_ops.checkpoint import (
    Checkpoint,
    clear_checkpoints,
    load_best_state,
    rng_state,
    run_fingerprint,
    save_best,
    seed_everything,
    state_fingerprint,
)
from simcse_ops.config import ConfigError, VariantConfig
from simcse_ops.distributed import (
    DistContext,
    all_gather_object,
    barrier,
    broadcast_parameters,
    gather_with_grad,
    init_distributed,
    shutdown,
    sum_gradients,
)
from simcse_ops.encoder import pick_device, resolve_model
from simcse_ops.files import atomic_path, model_hash, write_json
from simcse_ops.hardware import Precision, autocast, describe_device, precision_record, resolve_precision
from simcse_ops.loss import info_nce
from simcse_ops.fast_dropout import restore_attention, use_fast_attention_dropout, use_fast_dropout
from simcse_ops.model import SimCSEEncoder, _base_st_info, export_sentence_transformer
from simcse_ops.progress import Progress
from simcse_ops.sts import DevScorer
from simcse_ops.training_data import (
    COLUMNS,
    TrainingSet,
    build_training_set,
    epoch_permutation,
    length_groups,
    load_training_texts,
    pad_rows,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The step


def linear_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up 0 -> 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def configure_dropout(encoder: SimCSEEncoder, cfg: VariantConfig, device: torch.device) -> str | None:
    """`dropout_impl`: fast (FastDropout modules and attention), native (torch's), auto (fast on CPU).

    Returns the attention implementation to restore before saving (None: nothing to restore).
    """
    if cfg.dropout_impl == "fast" or (cfg.dropout_impl == "auto" and device.type == "cpu"):
        use_fast_dropout(encoder)
        return use_fast_attention_dropout(encoder.backbone)
    return None


def make_optimizer(encoder: torch.nn.Module, cfg: VariantConfig) -> torch.optim.AdamW:
    decay = [p for p in encoder.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in encoder.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def contrastive_loss(z: torch.Tensor, n_cols: int, cfg: VariantConfig, ctx: DistContext) -> torch.Tensor:
    """(n_cols * b, H) local embeddings -> the global-batch InfoNCE loss (same on every rank)."""
    parts = [gather_with_grad(p, ctx) for p in z.chunk(n_cols, dim=0)]  # each (B, H)
    negatives = parts[2] if n_cols == 3 else None
    return info_nce(parts[0], parts[1], negatives, cfg.temperature, cfg.hard_negative_weight)


def encode_rows(encoder: SimCSEEncoder, rows: list[np.ndarray], pad_id: int, groups: int,
                device: torch.device) -> torch.Tensor:
    """Training embeddings (N, H) of N token rows, in row order, from length-grouped passes.

    Each group is padded to its own longest row; the outputs are put back in row order, so the
    result equals `encoder(*pad_rows(rows))` up to float rounding and the dropout masks drawn.
    """
    parts = length_groups([len(r) for r in rows], groups)
    outs = []
    for idx in parts:
        ids, mask = pad_rows([rows[i] for i in idx], pad_id)
        outs.append(encoder(ids.to(device), mask.to(device)))
    if len(parts) == 1:  # length_groups returns one part only in row order
        return outs[0]
    inverse = torch.from_numpy(np.argsort(np.concatenate(parts))).to(device)
    return torch.cat(outs).index_select(0, inverse)


def train_step(
    encoder: SimCSEEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler,
    rows: list[np.ndarray],
    pad_id: int,
    n_cols: int,
    cfg: VariantConfig,
    ctx: DistContext = DistContext(),
    autocast=contextlib.nullcontext,
    device: torch.device = torch.device("cpu"),
) -> float:
    """One optimisation step on a batch of token rows (grouped by column); returns the loss."""
    with autocast():
        z = encode_rows(encoder, rows, pad_id, cfg.length_groups, device)  # (n_cols * b, H)
    loss = contrastive_loss(z, n_cols, cfg, ctx)
    loss.backward()
    params = [p for p in encoder.parameters() if p.grad is not None]
    sum_gradients(params, ctx)
    if cfg.max_grad_norm and cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_embed_fn(encoder: SimCSEEncoder, tokenizer, max_length: int, device: torch.device,
                  batch_size: int, autocast) -> Callable[[list[str]], np.ndarray]:
    """Inference embeddings (the exported model's computation) for dev evaluation."""

    def embed(sentences: list[str]) -> np.ndarray:
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = np.zeros((len(sentences), encoder.hidden_size), dtype=np.float32)
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(order), batch_size):
                    idx = order[s:s + batch_size]
                    enc = tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                    max_length=max_length, return_tensors="pt")
                    with autocast():
                        z = encoder.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device))
                    out[idx] = z.float().cpu().numpy()
        finally:
            encoder.train(was_training)
        return out

    return embed


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    epochs_run: float
    examples: int
    loss_curve: list[dict] = field(default_factory=list)
    dev_curve: list[dict] = field(default_factory=list)
    dev_metric: str | None = None  # the DevScorer's metric name (None: no model selection)
    best_step: int | None = None
    best_dev_score: float | None = None
    resumed_from_step: int | None = None
    wall_s: float = 0.0
    train_s: float = 0.0  # training-loop seconds of all steps 1..steps, across resumed runs
    sentences_per_s: float = 0.0  # steps * sentences per step / train_s
    precision: str = "fp32"  # the effective precision (hardware.resolve_precision), not the requested one

    def resume_from(self, ckpt: Checkpoint) -> None:
        """Continue a checkpoint's curves and best step."""
        self.loss_curve, self.dev_curve = ckpt.loss_curve, ckpt.dev_curve
        self.best_step, self.best_dev_score = ckpt.best_step, ckpt.best_dev_score
        self.resumed_from_step = ckpt.step


@dataclass(frozen=True)
class DevConfig:
    """Model selection: `scorer` scores inference embeddings computed at `max_length` tokens,
    `batch_size` sentences a pass."""

    scorer: DevScorer
    max_length: int = 512
    batch_size: int = 128


@dataclass
class LoopState:
    """What the loop shares with `evaluate_dev` and `save_checkpoint`: the run's parts, then its
    progress (step, best weights, timers), which only the loop and those two change."""

    cfg: VariantConfig
    encoder: SimCSEEncoder
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    result: TrainResult
    fingerprint: str  # run_fingerprint: what a checkpoint must match to resume this run
    steps_per_epoch: int
    ckpt_dir: Path
    dev: DevConfig | None
    device: torch.device
    ctx: DistContext
    precision: Precision = "fp32"  # effective: hardware.resolve_precision of cfg.precision
    step: int = 0  # steps done
    best_state: dict | None = None  # the best dev step's weights (rank 0), None: export the final
    start_state: dict | None = None  # the start weights, when cfg.interpolation < 1 (`interpolated`)
    prior_train_s: float = 0.0  # training seconds of steps 1..step carried by the resumed checkpoint
    t_train: float = 0.0  # perf_counter() when this run's training loop started

    def autocast(self):
        return autocast(self.precision, self.device)

    def train_s(self) -> float:
        """Training seconds of steps 1..step: a resumed run adds its own to the checkpoint's."""
        return self.prior_train_s + time.perf_counter() - self.t_train


def step_counts(cfg: VariantConfig, n: int, world_size: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, examples per rank and step) of a run on n examples."""
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    steps_per_epoch = n // cfg.batch_size  # the last incomplete batch of each epoch is dropped
    if steps_per_epoch == 0:
        raise ConfigError(f"{n} training examples are fewer than one batch of {cfg.batch_size}; lower batch_size")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    return steps_per_epoch, total, cfg.batch_size // world_size


def resume_or_seed(s: LoopState) -> None:
    """Resume from the latest checkpoint of this exact run, or clear a stale folder and seed afresh."""
    ckpt = Checkpoint.latest(s.ckpt_dir, s.fingerprint, s.result.dev_metric)
    if ckpt is None and s.ctx.is_main:
        clear_checkpoints(s.ckpt_dir)
    barrier(s.ctx)
    if ckpt is None:
        seed_everything(s.cfg.seed + s.ctx.rank)  # per-rank dropout masks; data order uses cfg.seed
        return
    ckpt.restore(s.encoder, s.optimizer, s.scheduler, s.ctx.rank)
    s.result.resume_from(ckpt)
    if s.dev is not None and s.result.dev_curve and s.result.dev_curve[0]["step"] == 0:
        start = s.result.dev_curve[0]  # the start model's figures, for a multi-task selection rule
        s.dev.scorer.reference.update({k: v for k, v in start.items() if k not in ("step", "dev_score")})
    s.step, s.prior_train_s = ckpt.step, float(ckpt.train_s)
    if s.result.best_step is not None and s.ctx.is_main:
        s.best_state = load_best_state(s.ckpt_dir, s.result.best_step)
    log.info("resumed from %s at step %d", s.ckpt_dir, s.step)


def interpolated(start: dict, trained: dict, w: float) -> dict:
    """(1 - w) * start + w * trained for every floating-point tensor (WiSE-FT); others as trained."""
    return {k: torch.lerp(start[k].to(v.device, v.dtype), v, w) if v.is_floating_point() else v
            for k, v in trained.items()}


@contextlib.contextmanager
def evaluated_weights(s: LoopState):
    """The weights a dev evaluation scores and a best step exports: the trained ones, or their
    interpolation with the start weights (`VariantConfig.interpolation`) for the block."""
    if s.start_state is None:
        yield
        return
    trained = {k: v.detach().clone() for k, v in s.encoder.state_dict().items()}
    s.encoder.load_state_dict(interpolated(s.start_state, trained, s.cfg.interpolation))
    try:
        yield
    finally:
        s.encoder.load_state_dict(trained)


def evaluate_dev(s: LoopState, selectable: bool = True) -> bool:
    """Score the model on dev (rank 0) onto the curve; a selectable step that beats the best so
    far becomes the best state (and `best-<step>.pt` when checkpointing). True on every rank when
    this step is a new best (the loop then checkpoints it: checkpoint.py's invariant)."""
    new_best = False
    if s.dev is not None and s.ctx.is_main:
        with evaluated_weights(s):
            new_best = _evaluate_dev(s, selectable)
    return any(all_gather_object(new_best, s.ctx))


def _evaluate_dev(s: LoopState, selectable: bool) -> bool:
    embed = make_embed_fn(s.encoder, s.tokenizer, s.dev.max_length, s.device, s.dev.batch_size, s.autocast)
    scorer = s.dev.scorer
    score = float(scorer.score(embed))
    s.result.dev_curve.append({"step": s.step, "dev_score": round(score, 4),
                               **{k: round(float(x), 4) for k, x in scorer.parts.items()}})
    if not selectable:
        if s.step == 0 and scorer.parts:  # the start model: what a multi-task rule compares with
            scorer.reference.update(scorer.parts)
        return False
    if s.result.best_dev_score is not None and score <= s.result.best_dev_score:
        return False
    s.result.best_dev_score, s.result.best_step = score, s.step
    s.best_state = {k: v.detach().cpu().clone() for k, v in s.encoder.state_dict().items()}
    if s.cfg.checkpoint_steps:
        save_best(s.ckpt_dir, s.step, score, s.best_state)
    return True


def save_checkpoint(s: LoopState) -> None:
    """Every rank's RNG state to rank 0, which writes the checkpoint (the latest only)."""
    rngs = all_gather_object(rng_state(), s.ctx)
    if s.ctx.is_main:
        r = s.result
        Checkpoint.at_step(
            s.step, s.steps_per_epoch, fingerprint=s.fingerprint, model=s.encoder.state_dict(),
            optimizer=s.optimizer.state_dict(), scheduler=s.scheduler.state_dict(), rng=rngs,
            loss_curve=r.loss_curve, dev_curve=r.dev_curve, dev_metric=r.dev_metric, best_step=r.best_step,
            best_dev_score=r.best_dev_score, train_s=s.train_s(), config=asdict(s.cfg),
        ).save_latest(s.ckpt_dir)
    barrier(s.ctx)


def evaluate_and_checkpoint(s: LoopState, bar: Progress, total: int) -> None:
    """After a step: score dev every `eval_steps` and at the last step, then checkpoint every
    `checkpoint_steps`, at the last step and at every new best step (best-<step>.pt is already
    written: checkpoint.py's invariant), so resume never starts before the best step."""
    cfg, result = s.cfg, s.result
    new_best = False
    if s.dev is not None and ((cfg.eval_steps and s.step % cfg.eval_steps == 0) or s.step == total):
        new_best = evaluate_dev(s)
        if result.best_dev_score is not None:
            bar.fields["best_dev"] = f"{result.best_dev_score:.2f} (step {result.best_step})"
        bar.log(f"dev {result.dev_curve[-1]['dev_score']:.2f}" if s.ctx.is_main and result.dev_curve else "")
    if cfg.checkpoint_steps and (new_best or s.step % cfg.checkpoint_steps == 0 or s.step == total):
        save_checkpoint(s)
        bar.log("checkpoint saved")


def train(
    cfg: VariantConfig,
    data: TrainingSet,
    encoder: SimCSEEncoder,
    tokenizer,
    *,
    ckpt_dir: Path,
    dev: DevConfig | None = None,
    device: torch.device = torch.device("cpu"),
    ctx: DistContext = DistContext(),
    progress: bool = True,
    precision: Precision | None = None,
    name: str = "train",
) -> tuple[TrainResult, dict | None]:
    """Train `encoder` in place; returns the result and the best dev state dict (None: use the final).

    `precision`: the effective precision (None: `resolve_precision(cfg.precision, device)`);
    `name` starts each progress line (the stage, e.g. train@unsup-wiki).
    """
    t_start = time.perf_counter()
    if precision is None:
        precision = resolve_precision(cfg.precision, device)
    steps_per_epoch, total, local_b = step_counts(cfg, len(data), ctx.world_size)
    warmup = int(round(cfg.warmup_ratio * total))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_cols = data.rows_per_example
    fp = run_fingerprint(cfg, data.fingerprint(), ctx.world_size, start=state_fingerprint(encoder.state_dict()),
                         dev=dev.scorer.fingerprint if dev is not None else "")

    encoder.to(device).train()
    previous_attention = configure_dropout(encoder, cfg, device)
    broadcast_parameters(encoder, ctx)
    optimizer = make_optimizer(encoder, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    result = TrainResult(steps=0, total_steps=total, epochs_run=0.0, examples=len(data),
                         dev_metric=dev.scorer.metric if dev is not None else None, precision=precision)
    s = LoopState(cfg, encoder, tokenizer, optimizer, scheduler, result, fp, steps_per_epoch, Path(ckpt_dir),
                  dev, device, ctx, precision)
    if cfg.interpolation < 1.0 and ctx.is_main:  # before a resume overwrites them
        s.start_state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    resume_or_seed(s)

    sentences_per_step = cfg.batch_size * data.sentences_per_example
    bar = Progress(name, total, unit="step", initial=s.step, per_item=sentences_per_step, rate_unit="sentences/s",
                   logger=log, enabled=progress and ctx.is_main)
    bar.log(f"{data.method}, {precision} on {describe_device(device)}")
    if s.step == 0 and dev is not None:
        # The base encoder's dev score, for the curve only: the export is always a trained step
        # (STS-B dev alone can rank the base first while the 7-task average prefers the trained one).
        evaluate_dev(s, selectable=False)
        bar.log(f"dev {result.dev_curve[-1]['dev_score']:.2f} before training" if result.dev_curve else "")
    s.t_train = time.perf_counter()
    perm_epoch, perm = -1, None
    while s.step < total:
        epoch, position = divmod(s.step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(len(data), cfg.seed, epoch), epoch
        global_idx = perm[position * cfg.batch_size:(position + 1) * cfg.batch_size]
        local_idx = global_idx[ctx.rank * local_b:(ctx.rank + 1) * local_b]
        lr = scheduler.get_last_lr()[0]
        loss = train_step(encoder, optimizer, scheduler, data.rows(local_idx), pad_id, n_cols, cfg, ctx,
                          s.autocast, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {s.step + 1}; lower variants lr")
        s.step += 1
        result.loss_curve.append({"step": s.step, "epoch": round(s.step / steps_per_epoch, 4),
                                  "loss": round(loss, 6), "lr": lr})
        bar.update(1, loss=f"{loss:.4f}")
        evaluate_and_checkpoint(s, bar, total)
    bar.log("done")
    restore_attention(encoder.backbone, previous_attention)

    result.train_s = s.train_s()
    result.steps, result.epochs_run = s.step, s.step / steps_per_epoch
    result.sentences_per_s = s.step * sentences_per_step / result.train_s if result.train_s > 0 else 0.0
    result.wall_s = time.perf_counter() - t_start
    if s.best_state is None and s.start_state is not None:  # no dev set: the final weights, interpolated
        s.best_state = interpolated(s.start_state, encoder.state_dict(), cfg.interpolation)
    return result, s.best_state


# --------------------------------------------------------------------------------------------
# The whole job: data -> model -> checkpoints -> models/<variant>/ + metrics


def run_training(
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
) -> TrainResult | None:
    """Train a variant and write `out_dir` (sentence-transformers folder) and `metrics_dir`.

    Under torchrun only rank 0 writes; the other ranks return None.
    """
    if cfg.method not in COLUMNS:
        raise ConfigError(f"variants.{variant}.method: {cfg.method!r} does not train")
    requested = pick_device(device)
    ctx = init_distributed("cuda" if requested.startswith("cuda") else "cpu")
    try:
        torch_device = torch.device(pick_device(requested, ctx.local_rank if ctx.enabled else None))
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        precision = resolve_precision(cfg.precision, torch_device, key=f"variants.{variant}.precision")
        resolved = resolve_model(cfg.base_model)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        texts = load_training_texts(data_dir, cfg.corpus, cfg.method, cfg.max_train_samples)
        data = build_training_set(tokenizer, texts, cfg.method, cfg.max_seq_length)
        infer_len, _ = _base_st_info(cfg.base_model)
        seed_everything(cfg.seed)  # the MLP head's initialisation is the same on every rank
        encoder = SimCSEEncoder.from_pretrained(resolved, cfg.pooler, cfg.mlp, cfg.mlp_only_train)
        dev_cfg = DevConfig(dev, infer_len, dev_batch_size) if dev is not None else None
        result, best_state = train(cfg, data, encoder, tokenizer, ckpt_dir=ckpt_dir, dev=dev_cfg,
                                   device=torch_device, ctx=ctx, progress=progress, precision=precision,
                                   name=f"train@{variant}")
        if not ctx.is_main:
            return None
        if best_state is not None:
            encoder.load_state_dict(best_state)
        encoder.to("cpu")
        export_sentence_transformer(encoder, tokenizer, out_dir, base_model=cfg.base_model)
        write_training_metrics(metrics_dir, result, variant=variant, method=cfg.method,
                               exported_best=best_state is not None, world_size=ctx.world_size, device=torch_device,
                               base_model=cfg.base_model)
        return result
    finally:
        shutdown(ctx)


# --------------------------------------------------------------------------------------------
# Metrics


def write_curves(metrics_dir: Path | str, loss_curve: list[dict], dev_curve: list[dict]) -> None:
    """The DVC plots: loss.csv (step, epoch, loss, lr) and dev.csv (step, dev_score).

    dev_score is the DevScorer's number; train.json's `dev_metric` names it. A multi-task
    scorer's per-task figures follow as more columns of dev.csv.
    """
    metrics_dir = Path(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    parts = list(dict.fromkeys(k for r in dev_curve for k in r if k not in ("step", "dev_score")))
    for name, rows, columns in (("loss.csv", loss_curve, ["step", "epoch", "loss", "lr"]),
                                ("dev.csv", dev_curve, ["step", "dev_score", *parts])):
        with atomic_path(metrics_dir / name) as tmp:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)


def write_training_metrics(metrics_dir: Path | str, result: TrainResult, *, variant: str, method: str,
                           exported_best: bool, world_size: int, device: torch.device,
                           base_model: str | None = None) -> None:
    """metrics/<V>/train/: train.json (the DVC metrics), loss.csv and dev.csv (the DVC plots)."""
    metrics = {
        "variant": variant,
        "method": method,
        "examples": result.examples,
        "steps": result.steps,
        "epochs": round(result.epochs_run, 4),
        "final_loss": result.loss_curve[-1]["loss"] if result.loss_curve else None,
        "best_step": result.best_step,
        "dev_metric": result.dev_metric,
        "best_dev_score": None if result.best_dev_score is None else round(result.best_dev_score, 2),
        "exported_step": result.best_step if exported_best else result.steps,
        "sentences_per_s": round(result.sentences_per_s, 1),
        "train_s": round(result.train_s, 1),
        "wall_s": round(result.wall_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "world_size": world_size,
        "base_model": base_model,  # and, for a local folder (another variant's model), its sha256
        "base_model_sha256": model_hash(base_model) if base_model and Path(base_model).is_dir() else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        **precision_record(result.precision, device),
    }
    metrics_dir = Path(metrics_dir)
    write_curves(metrics_dir, result.loss_curve, result.dev_curve)
    write_json(metrics_dir / "train.json", metrics)
