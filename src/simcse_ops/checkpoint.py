"""Resumable training state: checkpoints, the best step's weights, RNG state and the run fingerprint.

Data order: epoch e visits the examples in the permutation `default_rng(seed + e)`; a step is a
position in that permutation, so (epoch, position) is the whole data-order state. A checkpoint
holds the model, optimizer, scheduler, every rank's RNG states (python, numpy, torch, cuda), the
data-order state, the loss / dev curves, the dev metric's name and the best dev score: a run killed
at any moment and resumed from its last checkpoint reproduces the uninterrupted run's loss curve
exactly.

On disk, in a run's checkpoint folder (every file written atomically):
- `checkpoint-<step:08d>.pt`: a `Checkpoint` as a `torch.save`d dict, one key per field; only the
  latest is kept. It resumes a run only if its `format` is `CHECKPOINT_FORMAT` and its
  `fingerprint` is the run's `run_fingerprint` (every setting that changes the numbers, the
  training data, the start weights and the dev sets);
- `best-<step:08d>.pt`: {step, score, model}, the weights of a best dev step (`save_best`).

Invariant, whenever the process is killed: the latest checkpoint names a best step B <= its own
step, and `best-<B>.pt` is on disk. The loops keep it by writing in this order: a new best step
S writes `best-<S>.pt`, then `checkpoint-<S>.pt` (a new best step is always a checkpoint step),
then `save_latest` deletes the older checkpoints and every best file but `best-<S>.pt`. So once a
best step's checkpoint is written, resume starts at that step or later; a kill between the two
writes resumes from the previous checkpoint with its own best (the newer best file is not read,
and the resumed run writes it again). A folder written before best files were named by step has
one `best.pt`, read when its step is the checkpoint's best step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from simcse_ops.config import VariantConfig
from simcse_ops.files import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
LEGACY_BEST_FILE = "best.pt"  # the one best file of folders written before `best-<step>.pt`
# The dev metric of checkpoints written before the dev metric was pluggable.
LEGACY_DEV_METRIC = "stsb_dev_spearman"

# VariantConfig keys added after checkpoint format 1: fingerprinted only when set away from their
# defaults, so a run's checkpoints written before the key existed still resume.
LATER_KEYS = ("tsdae_deletion_ratio", "domain_tasks", "primary_task")


# --------------------------------------------------------------------------------------------
# RNG and fingerprint


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


def run_fingerprint(cfg: VariantConfig, data_fp: str, world_size: int, *, start: str = "", dev: str = "") -> str:
    """What a checkpoint must match to be resumed: every setting that changes the numbers, the
    training data (`data_fp`), and, when given, the start weights (`start`, `state_fingerprint` of
    the model before step 1: `base_model: models/unsup-wiki` names a folder whose weights change
    when unsup-wiki retrains) and the dev sets that pick the best step (`dev`,
    `DevScorer.fingerprint`). A run whose start model or dev split changed starts over instead of
    resuming the old run's finished checkpoint."""
    d = asdict(cfg)
    for k in ("description", "checkpoint_steps"):
        d.pop(k, None)
    defaults = {f.name: f.default for f in fields(cfg)}
    for k in LATER_KEYS:
        if k in d and d[k] == defaults[k]:
            del d[k]
    d.update(data=data_fp, world_size=world_size)
    d.update({k: v for k, v in (("start", start), ("dev", dev)) if v})
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (exact, any dtype)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Files


def checkpoint_files(ckpt_dir: Path | str) -> list[Path]:
    """The folder's checkpoint-*.pt files, oldest step first."""
    return sorted(Path(ckpt_dir).glob("checkpoint-*.pt"))


def best_file(ckpt_dir: Path | str, step: int) -> Path:
    return Path(ckpt_dir) / f"best-{step:08d}.pt"


def clear_checkpoints(ckpt_dir: Path | str) -> None:
    """Delete a folder's checkpoints and best files (those of another run)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for stale in checkpoint_files(ckpt_dir) + sorted(ckpt_dir.glob("best-*.pt")) + [ckpt_dir / LEGACY_BEST_FILE]:
            stale.unlink(missing_ok=True)


def torch_save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_best(ckpt_dir: Path | str, step: int, score: float, model_state: dict) -> None:
    """`<ckpt_dir>/best-<step>.pt`: a best dev step's weights, for a resumed run to export. Write
    it before the checkpoint of the same step (the module's invariant)."""
    torch_save_atomic({"step": step, "score": score, "model": model_state}, best_file(ckpt_dir, step))


def load_best_state(ckpt_dir: Path | str, best_step: int) -> dict:
    """The weights of the checkpoint's best step: `best-<best_step>.pt`, or, in a folder written
    before best files were named by step, `best.pt` when it holds that step."""
    path = best_file(ckpt_dir, best_step)
    if not path.is_file() and (Path(ckpt_dir) / LEGACY_BEST_FILE).is_file():
        path = Path(ckpt_dir) / LEGACY_BEST_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing, the checkpoint's best step is {best_step}; "
                           f"delete {ckpt_dir} and retrain")
    best = torch.load(path, map_location="cpu", weights_only=False)
    if best["step"] != best_step:
        raise RuntimeError(f"{path} is from step {best['step']}, "
                           f"the checkpoint expects {best_step}; delete {ckpt_dir} and retrain")
    return best["model"]


# --------------------------------------------------------------------------------------------
# The checkpoint


@dataclass(kw_only=True)
class Checkpoint:
    """Everything a killed run needs to continue as if uninterrupted (the fields are the file's keys)."""

    format: int = CHECKPOINT_FORMAT
    fingerprint: str  # run_fingerprint of the run that wrote it
    step: int  # steps done
    epoch: int  # data order: step = epoch * steps_per_epoch + position
    position: int
    model: dict  # state dicts
    optimizer: dict
    scheduler: dict
    rng: list[dict]  # rng_state() of every rank, by rank
    loss_curve: list[dict]
    dev_curve: list[dict]
    dev_metric: str | None  # the DevScorer's metric name (None: no model selection)
    best_step: int | None
    best_dev_score: float | None
    train_s: float = 0.0  # training seconds of steps 1..step, across resumed runs
    config: dict  # asdict(VariantConfig), for the reader

    @classmethod
    def at_step(cls, step: int, steps_per_epoch: int, **kwargs) -> Checkpoint:
        """A checkpoint after `step` steps: the data-order state (epoch, position) follows from it."""
        epoch, position = divmod(step, steps_per_epoch)
        return cls(step=step, epoch=epoch, position=position, **kwargs)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: no tensor is copied

    @classmethod
    def from_dict(cls, state: dict) -> Checkpoint:
        """A checkpoint from its file's dict; one written before the dev metric was pluggable is
        converted (selected on STS-B dev)."""
        state = dict(state)
        if "best_dev_score" not in state:
            state["best_dev_score"] = state.get("best_dev_spearman")
            state["dev_curve"] = [{"step": r["step"], "dev_score": r["stsb_dev_spearman"]} for r in state["dev_curve"]]
        state.setdefault("dev_metric", LEGACY_DEV_METRIC)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})

    def save(self, path: Path | str) -> None:
        """Write atomically: a reader sees the previous file or the whole new one, never a part."""
        torch_save_atomic(self.to_dict(), Path(path))

    def save_latest(self, ckpt_dir: Path | str) -> Path:
        """Write `<ckpt_dir>/checkpoint-<step>.pt`, then delete the folder's older checkpoints and
        the best files of steps other than this checkpoint's best step."""
        path = Path(ckpt_dir) / f"checkpoint-{self.step:08d}.pt"
        self.save(path)
        keep = best_file(ckpt_dir, self.best_step) if self.best_step is not None else None
        for old in checkpoint_files(ckpt_dir) + sorted(Path(ckpt_dir).glob("best-*.pt")):
            if old not in (path, keep):
                old.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: Path | str) -> Checkpoint:
        return cls.from_dict(torch.load(path, map_location="cpu", weights_only=False))

    @classmethod
    def latest(cls, ckpt_dir: Path | str, fingerprint: str, dev_metric: str | None = None) -> Checkpoint | None:
        """The newest checkpoint written for this exact run, or None (the caller clears a stale folder).

        A checkpoint of another format or fingerprint is stale; so is one whose best step was
        chosen by another dev metric (one written before checkpoints recorded the metric was
        selected on STS-B dev).
        """
        ckpt_dir = Path(ckpt_dir)
        found = checkpoint_files(ckpt_dir) if ckpt_dir.is_dir() else []
        if not found:
            return None
        state = torch.load(found[-1], map_location="cpu", weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != fingerprint:
            log.warning("%s: checkpoints belong to another configuration or data; starting afresh", ckpt_dir)
            return None
        saved_metric = state.get("dev_metric", LEGACY_DEV_METRIC)
        if dev_metric is not None and state.get("best_step") is not None and saved_metric != dev_metric:
            log.warning("%s: checkpoints selected on %s, this run on %s; starting afresh", ckpt_dir, saved_metric,
                        dev_metric)
            return None
        return cls.from_dict(state)

    def restore(self, model: torch.nn.Module, optimizer, scheduler, rank: int = 0) -> None:
        """Load the weights, optimizer, schedule and this rank's RNG state into a run."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        scheduler.load_state_dict(self.scheduler)
        set_rng_state(self.rng[rank])
