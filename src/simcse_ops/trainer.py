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
decay to 0, gradient clipping, bf16 autocast on CUDA. Text is tokenised once, ahead of time,
truncated to `max_seq_length` (32 by default).

Less padding: the step's rows are sorted by length and encoded in `length_groups` forward passes,
each padded to its own longest row (`encode_rows`). The encoder maps every row independently
(padding is masked out), so the embeddings, the loss over the whole batch and its in-batch
negatives are those of one padded pass; only the compute spent on padding tokens is saved
(31 % of the tokens of a random wiki1m batch at length 32). Dropout masks come from `FastDropout`
on CPU (`dropout_impl`), which draws 4 mask elements per 64-bit random number, for the dropout
modules and, through a registered attention function, for the attention probabilities.

Data order: epoch e visits the examples in the permutation `default_rng(seed + e)`; a step is a
position in that permutation, so (epoch, position) is the whole data-order state. A checkpoint
holds the model, optimizer, scheduler, every rank's RNG states (python, numpy, torch, cuda), the
data-order state, the loss / dev curves, the dev metric's name and the best dev score: a run killed at any moment and
resumed from its last checkpoint reproduces the uninterrupted run's loss curve exactly.

Under torchrun each rank encodes its slice of the global batch, embeddings are gathered with the
local slice keeping its gradient, and gradients are summed across ranks (`distributed.py`), so the
loss and update equal a single process's on the same global batch.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from simcse_ops.config import ConfigError, VariantConfig
from simcse_ops.distributed import (
    DistContext,
    all_gather_object,
    barrier,
    broadcast_parameters,
    gather_with_grad,
    sum_gradients,
)
from simcse_ops.files import DataError, atomic_path, write_json
from simcse_ops.loss import info_nce
from simcse_ops.model import SimCSEEncoder, restore_attention, use_fast_attention_dropout, use_fast_dropout
from simcse_ops.sts import DevScorer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
COLUMNS = {"unsup": ("text",), "sup": ("anchor", "positive", "negative"), "pairs": ("anchor", "positive")}


# --------------------------------------------------------------------------------------------
# Data


def load_training_texts(
    data_dir: Path | str, corpus: Sequence[str], method: str, max_samples: int | None = None
) -> dict[str, list[str]]:
    """Read `<data_dir>/<source>.parquet` for every source of the variant's corpus, concatenated.

    unsup reads the CORPUS column `text`; sup reads the NLI columns anchor / positive / negative;
    pairs reads the text_pairs columns anchor / positive.
    """
    if method not in COLUMNS:
        raise ConfigError(f"method {method!r} has no training data (expected one of {', '.join(COLUMNS)})")
    if not corpus:
        raise ConfigError(f"a {method} variant needs `corpus: [source, ...]` in params.yaml")
    cols = COLUMNS[method]
    out: dict[str, list[str]] = {c: [] for c in cols}
    for source in corpus:
        path = Path(data_dir) / f"{source}.parquet"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: training data for source {source!r} not found; run the dedup stage "
                f"(or ingest) first, or pass --data with the folder that holds it"
            )
        names = pq.read_schema(path).names
        missing = [c for c in cols if c not in names]
        if missing:
            raise DataError(path, None, f"columns {names}", f"columns {list(cols)} for a {method} variant",
                            "check the variant's `method` and `corpus` in params.yaml")
        extra = [c for c in ("file", "line") if c in names]
        table = pq.read_table(path, columns=list(cols) + extra).to_pydict()
        for c in cols:
            for i, v in enumerate(table[c]):
                if v is None or not str(v).strip():
                    where = table["line"][i] if "line" in table else i + 1
                    raise DataError(path, where, f"an empty {c!r}", "non-empty text in every row",
                                    "fix or drop the row upstream (ingest / dedup)")
            out[c].extend(table[c])
    n = len(out[cols[0]])
    if max_samples is not None:
        n = min(n, max_samples)
        out = {c: v[:n] for c, v in out.items()}
    if n == 0:
        raise DataError(Path(data_dir), None, "0 training examples", f"at least one row in {list(corpus)}")
    return out


@dataclass
class TokenizedColumn:
    """Token ids of N texts, stored flat: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1


def tokenize_column(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 8192) -> TokenizedColumn:
    """Tokenise once, ahead of training; truncation to `max_length` includes the special tokens."""
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
        for row in enc["input_ids"]:
            parts.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return TokenizedColumn(ids, offsets)


@dataclass
class TrainingSet:
    method: str
    columns: dict[str, TokenizedColumn]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def sentences_per_example(self) -> int:
        return len(self.columns)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.method.encode())
        for name, col in self.columns.items():
            h.update(name.encode())
            h.update(col.offsets.tobytes())
            h.update(col.ids.tobytes())
        return h.hexdigest()[:16]

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        """Token rows for examples `idx`, in forward-pass order: unsup [x, x]; sup [a, p, n]; pairs [a, p]."""
        if self.method == "unsup":
            col = self.columns["text"]
            rows = [col.ids[col.offsets[i]:col.offsets[i + 1]] for i in idx]
            return rows + rows
        out = []
        for name in COLUMNS[self.method]:
            col = self.columns[name]
            out.extend(col.ids[col.offsets[i]:col.offsets[i + 1]] for i in idx)
        return out


def build_training_set(tokenizer, texts: dict[str, list[str]], method: str, max_length: int) -> TrainingSet:
    return TrainingSet(method, {c: tokenize_column(tokenizer, texts[c], max_length) for c in COLUMNS[method]})


def pad_rows(rows: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding: (N rows) -> input_ids (N, T), attention_mask (N, T), T = longest row."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(seed + epoch).permutation(n)


# --------------------------------------------------------------------------------------------
# Schedule, RNG, checkpoints


def linear_schedule(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up 0 -> 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# VariantConfig keys added after checkpoint format 1: fingerprinted only when set away from their
# defaults, so a run's checkpoints written before the key existed still resume.
LATER_KEYS = ("tsdae_deletion_ratio", "domain_tasks", "primary_task")


def run_fingerprint(cfg: VariantConfig, data_fp: str, world_size: int) -> str:
    """What a checkpoint must match to be resumed: every setting that changes the numbers."""
    d = asdict(cfg)
    for k in ("description", "checkpoint_steps"):
        d.pop(k, None)
    defaults = {f.name: f.default for f in fields(cfg)}
    for k in LATER_KEYS:
        if k in d and d[k] == defaults[k]:
            del d[k]
    d.update(data=data_fp, world_size=world_size)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("checkpoint-*.pt"))


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_latest_checkpoint(ckpt_dir: Path, fingerprint: str, dev_metric: str | None = None) -> dict | None:
    """The newest checkpoint written for this exact run, or None (a stale folder is cleared).

    A checkpoint whose best step was chosen by another dev metric is stale too; one written before
    checkpoints recorded the metric was selected on STS-B dev.
    """
    found = _checkpoints(ckpt_dir)
    if not found:
        return None
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
        log.warning("%s: checkpoints belong to another configuration or data; starting afresh", ckpt_dir)
        return None
    saved_metric = state.get("dev_metric", "stsb_dev_spearman")
    if dev_metric is not None and state.get("best_step") is not None and saved_metric != dev_metric:
        log.warning("%s: checkpoints selected on %s, this run on %s; starting afresh", ckpt_dir, saved_metric,
                    dev_metric)
        return None
    if "best_dev_score" not in state:  # written before the dev metric was pluggable
        state["best_dev_score"] = state.get("best_dev_spearman")
        state["dev_curve"] = [{"step": r["step"], "dev_score": r["stsb_dev_spearman"]} for r in state["dev_curve"]]
    return state


def restore_checkpoint(state: dict, model: torch.nn.Module, optimizer, scheduler, result: "TrainResult",
                       rank: int = 0) -> tuple[int, float]:
    """Load a checkpoint's weights, optimizer, schedule, this rank's RNG state and curves into a run;
    returns (step, training seconds of steps 1..step)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"][rank])
    result.loss_curve, result.dev_curve = state["loss_curve"], state["dev_curve"]
    result.best_step, result.best_dev_score = state["best_step"], state["best_dev_score"]
    result.resumed_from_step = state["step"]
    return state["step"], float(state.get("train_s", 0.0))


def load_best_state(ckpt_dir: Path, best_step: int) -> dict:
    """The best step's weights from `<ckpt_dir>/best.pt`, checked against the checkpoint's best step."""
    best = torch.load(Path(ckpt_dir) / "best.pt", map_location="cpu", weights_only=False)
    if best["step"] != best_step:
        raise RuntimeError(f"{ckpt_dir}/best.pt is from step {best['step']}, "
                           f"the checkpoint expects {best_step}; delete {ckpt_dir} and retrain")
    return best["model"]


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


def autocast_for(cfg: VariantConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def length_groups(lengths: Sequence[int], groups: int) -> list[np.ndarray]:
    """Row indices in `groups` runs of similar length: a stable sort by length, cut evenly.

    groups = 1 keeps the rows in their own order (one pass, exactly the plain padded batch).
    """
    n = len(lengths)
    if groups <= 1 or n <= 1:
        return [np.arange(n)]
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [g for g in np.array_split(order, min(groups, n)) if len(g)]


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


def write_curves(metrics_dir: Path | str, loss_curve: list[dict], dev_curve: list[dict]) -> None:
    """The DVC plots: loss.csv (step, epoch, loss, lr) and dev.csv (step, dev_score).

    dev_score is the DevScorer's number; train.json's `dev_metric` names it.
    """
    metrics_dir = Path(metrics_dir)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for name, rows, columns in (("loss.csv", loss_curve, ["step", "epoch", "loss", "lr"]),
                                ("dev.csv", dev_curve, ["step", "dev_score"])):
        with atomic_path(metrics_dir / name) as tmp:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=columns)
                w.writeheader()
                w.writerows(rows)


def train(
    cfg: VariantConfig,
    data: TrainingSet,
    encoder: SimCSEEncoder,
    tokenizer,
    *,
    ckpt_dir: Path,
    dev: DevScorer | None = None,
    dev_max_length: int = 512,
    dev_batch_size: int = 128,
    device: torch.device = torch.device("cpu"),
    ctx: DistContext = DistContext(),
    progress: bool = True,
) -> tuple[TrainResult, dict | None]:
    """Train `encoder` in place; returns the result and the best dev state dict (None: use the final).

    One function because the loop, dev evaluation and checkpointing share the run's state (step,
    best state, timers) through two closures; setup and resume are helpers above.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes")
    local_b = cfg.batch_size // ctx.world_size
    n = len(data)
    steps_per_epoch = n // cfg.batch_size  # the last incomplete batch of each epoch is dropped
    if steps_per_epoch == 0:
        raise ConfigError(f"{n} training examples are fewer than one batch of {cfg.batch_size}; lower batch_size")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_ratio * total))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n_cols = len(data.rows(np.zeros(1, dtype=np.int64)))
    fp = run_fingerprint(cfg, data.fingerprint(), ctx.world_size)

    encoder.to(device).train()
    previous_attention = configure_dropout(encoder, cfg, device)
    broadcast_parameters(encoder, ctx)
    optimizer = make_optimizer(encoder, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total))
    autocast = lambda: autocast_for(cfg, device)  # noqa: E731

    dev_metric = dev.metric if dev is not None else None
    result = TrainResult(steps=0, total_steps=total, epochs_run=0.0, examples=n, dev_metric=dev_metric)
    best_state: dict | None = None
    ckpt_dir = Path(ckpt_dir)
    state = load_latest_checkpoint(ckpt_dir, fp, dev_metric) if ckpt_dir.is_dir() else None
    if state is None and ctx.is_main and ckpt_dir.is_dir():
        for stale in list(_checkpoints(ckpt_dir)) + [ckpt_dir / "best.pt"]:
            stale.unlink(missing_ok=True)
    barrier(ctx)
    if state is not None:
        step, prior_train_s = restore_checkpoint(state, encoder, optimizer, scheduler, result, ctx.rank)
        if result.best_step is not None and ctx.is_main:
            best_state = load_best_state(ckpt_dir, result.best_step)
        log.info("resumed from %s at step %d", ckpt_dir, step)
    else:
        step = 0
        prior_train_s = 0.0
        seed_everything(cfg.seed + ctx.rank)  # per-rank dropout masks; data order uses cfg.seed

    def evaluate_dev(selectable: bool = True) -> None:
        nonlocal best_state
        if dev is None or not ctx.is_main:
            return
        embed = make_embed_fn(encoder, tokenizer, dev_max_length, device, dev_batch_size, autocast)
        score = float(dev.score(embed))
        result.dev_curve.append({"step": step, "dev_score": round(score, 4)})
        if not selectable:
            return
        if result.best_dev_score is None or score > result.best_dev_score:
            result.best_dev_score, result.best_step = score, step
            best_state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
            if cfg.checkpoint_steps:
                _torch_save_atomic({"step": step, "score": score, "model": best_state}, ckpt_dir / "best.pt")

    def save_checkpoint() -> None:
        rngs = all_gather_object(rng_state(), ctx)
        if ctx.is_main:
            ckpt = {
                "format": CHECKPOINT_FORMAT, "fingerprint": fp, "step": step,
                "epoch": step // steps_per_epoch, "position": step % steps_per_epoch,
                "model": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rngs,
                "loss_curve": result.loss_curve, "dev_curve": result.dev_curve,
                "dev_metric": dev_metric, "best_step": result.best_step, "best_dev_score": result.best_dev_score,
                "train_s": prior_train_s + time.perf_counter() - t_train,  # of steps 1..step
                "config": asdict(cfg),
            }
            path = ckpt_dir / f"checkpoint-{step:08d}.pt"
            _torch_save_atomic(ckpt, path)
            for old in _checkpoints(ckpt_dir):
                if old != path:
                    old.unlink(missing_ok=True)
        barrier(ctx)

    bar = tqdm(total=total, initial=step, disable=not (progress and ctx.is_main), dynamic_ncols=True,
               desc=f"train {data.method}")
    if step == 0 and dev is not None:
        # The base encoder's dev score, for the curve only: the export is always a trained step
        # (STS-B dev alone can rank the base first while the 7-task average prefers the trained one).
        evaluate_dev(selectable=False)
    sentences_per_step = cfg.batch_size * data.sentences_per_example
    t_train = time.perf_counter()
    steps_this_run = 0
    perm_epoch, perm = -1, None
    while step < total:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(n, cfg.seed, epoch), epoch
        global_idx = perm[position * cfg.batch_size:(position + 1) * cfg.batch_size]
        local_idx = global_idx[ctx.rank * local_b:(ctx.rank + 1) * local_b]
        lr = scheduler.get_last_lr()[0]
        loss = train_step(encoder, optimizer, scheduler, data.rows(local_idx), pad_id, n_cols, cfg, ctx,
                          autocast, device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {step + 1}; lower variants lr")
        step += 1
        steps_this_run += 1
        result.loss_curve.append({"step": step, "epoch": round(step / steps_per_epoch, 4),
                                  "loss": round(loss, 6), "lr": lr})
        elapsed = time.perf_counter() - t_train
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", sent_s=f"{steps_this_run * sentences_per_step / elapsed:.0f}")
        if dev is not None and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == total):
            evaluate_dev()
        if cfg.checkpoint_steps and (step % cfg.checkpoint_steps == 0 or step == total):
            save_checkpoint()
    bar.close()
    restore_attention(encoder.backbone, previous_attention)
    # A resumed run adds its own time to the time the checkpoint carried for the steps before it.
    result.train_s = prior_train_s + time.perf_counter() - t_train
    result.steps = step
    result.epochs_run = step / steps_per_epoch
    result.sentences_per_s = step * sentences_per_step / result.train_s if result.train_s > 0 else 0.0
    result.wall_s = time.perf_counter() - t_start
    return result, best_state


# --------------------------------------------------------------------------------------------
# The whole job: data -> model -> checkpoints -> models/<variant>/ + metrics


def pick_torch_device(device: str, ctx: DistContext) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return torch.device(device)


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
    from transformers import AutoTokenizer

    from simcse_ops.distributed import init_distributed, shutdown
    from simcse_ops.encoder import resolve_model
    from simcse_ops.model import _base_st_info, export_sentence_transformer

    if cfg.method not in COLUMNS:
        raise ConfigError(f"variants.{variant}.method: {cfg.method!r} does not train")
    requested = "cuda" if device == "auto" and torch.cuda.is_available() else device
    ctx = init_distributed("cuda" if requested.startswith("cuda") else "cpu")
    try:
        dev_device = pick_torch_device(device, ctx)
        if dev_device.type == "cuda":
            torch.cuda.set_device(dev_device)
        resolved = resolve_model(cfg.base_model)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        texts = load_training_texts(data_dir, cfg.corpus, cfg.method, cfg.max_train_samples)
        data = build_training_set(tokenizer, texts, cfg.method, cfg.max_seq_length)
        infer_len, _ = _base_st_info(cfg.base_model)
        seed_everything(cfg.seed)  # the MLP head's initialisation is the same on every rank
        encoder = SimCSEEncoder.from_pretrained(resolved, cfg.pooler, cfg.mlp, cfg.mlp_only_train)
        result, best_state = train(cfg, data, encoder, tokenizer, ckpt_dir=ckpt_dir, dev=dev,
                                   dev_max_length=infer_len, dev_batch_size=dev_batch_size,
                                   device=dev_device, ctx=ctx, progress=progress)
        if not ctx.is_main:
            return None
        if best_state is not None:
            encoder.load_state_dict(best_state)
        encoder.to("cpu")
        export_sentence_transformer(encoder, tokenizer, out_dir, base_model=cfg.base_model)
        write_training_metrics(metrics_dir, result, variant=variant, method=cfg.method,
                               exported_best=best_state is not None, world_size=ctx.world_size, device=dev_device)
        return result
    finally:
        shutdown(ctx)


def write_training_metrics(metrics_dir: Path | str, result: TrainResult, *, variant: str, method: str,
                           exported_best: bool, world_size: int, device: torch.device) -> None:
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
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    metrics_dir = Path(metrics_dir)
    write_curves(metrics_dir, result.loss_curve, result.dev_curve)
    write_json(metrics_dir / "train.json", metrics)
