"""Progress a person can read in `dvc repro`, `python -m flows.*` and the Prefect logs: whole log
lines, never carriage returns, at most one every `interval_s` (30 s) unless the caller forces one
(a dev evaluation, a checkpoint, a new phase). A long stage is never silent for minutes.

One line reads

    train@unsup-wiki: step 40/88 (45%), 131 sentences/s, elapsed 3m05s, ETA 3m42s, loss 0.1234, best dev 82.10

rate and ETA from the items done in this run (a resumed run does not count the steps it
inherited): rate = (done - initial) * per_item / elapsed, ETA = (total - done) * elapsed / (done - initial).

`forward_progress` counts the sentences through a model's forward passes (a forward hook), so a
single `model.encode(...)` over thousands of sentences reports too, with its numbers unchanged.
`configure_logging` is what a stage's `main()` calls so the INFO lines reach stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

INTERVAL_S = 30.0
log = logging.getLogger(__name__)


def configure_logging(level: int = logging.INFO) -> None:
    """INFO lines to stderr, one per record, each flushed (logging.StreamHandler flushes on emit),
    and no tqdm bars from Hugging Face libraries (their carriage returns garble DVC and Prefect
    logs). The logging part is a no-op where the root logger already has a handler (pytest)."""
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    hf_logging = sys.modules.get("transformers.utils.logging")  # already imported: switch its bars off
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


def duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m: short and fixed in form, for log lines."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Throttled progress lines for one long task of `total` items (None: unknown).

    `update(n, **fields)` advances and logs only when `interval_s` has passed since the last line;
    `log(**fields)` logs now. Fields are appended as `name value` (underscores read as spaces:
    best_dev="82.10" -> "best dev 82.10"); the caller formats their values. `per_item` and
    `rate_unit` turn items into the rate shown (a training step of 256 sentences:
    per_item=256, rate_unit="sentences/s"). `clock` is injectable for tests.
    """

    def __init__(self, what: str, total: int | None = None, *, unit: str = "", initial: int = 0,
                 interval_s: float = INTERVAL_S, per_item: float = 1.0, rate_unit: str | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None,
                 enabled: bool = True) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.initial = self.done = initial
        self.interval_s, self.per_item = interval_s, per_item
        self.rate_unit = rate_unit or (f"{unit}/s" if unit else "items/s")
        self.clock, self.logger, self.enabled = clock, logger or log, enabled
        self.t0 = self.last = clock()
        self.fields: dict[str, str] = {}

    def update(self, n: int = 1, **fields: str) -> str | None:
        """Advance by `n` items; log a line (and return it) when `interval_s` has passed."""
        self.done += n
        self.fields.update(fields)
        if self.clock() - self.last >= self.interval_s:
            return self.log()
        return None

    def log(self, note: str = "", **fields: str) -> str:
        """Log a line now (at a dev evaluation, a checkpoint, a new phase) and return it."""
        self.fields.update(fields)
        now = self.clock()
        self.last = now
        line = self.line(now, note)
        if self.enabled:
            self.logger.info(line)
        return line

    def line(self, now: float, note: str = "") -> str:
        elapsed = now - self.t0
        unit = f"{self.unit} " if self.unit else ""
        count = f"{unit}{self.done}" if self.total is None else f"{unit}{self.done}/{self.total}"
        if self.total:
            count += f" ({100 * self.done / self.total:.0f}%)"
        parts = [count]
        fresh = self.done - self.initial
        if fresh > 0 and elapsed > 0:
            rate = fresh * self.per_item / elapsed
            parts.append(f"{rate:.0f} {self.rate_unit}" if rate >= 100 else f"{rate:.3g} {self.rate_unit}")
        parts.append(f"elapsed {duration(elapsed)}")
        if self.total is not None and fresh > 0 and self.done < self.total:
            parts.append(f"ETA {duration((self.total - self.done) * elapsed / fresh)}")
        parts += [f"{k.replace('_', ' ')} {v}" for k, v in self.fields.items()]
        if note:
            parts.append(note)
        return f"{self.what}: " + ", ".join(parts)


@contextlib.contextmanager
def forward_progress(module, what: str, total: int, *, interval_s: float = INTERVAL_S,
                     clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """Within the block, every forward pass of `module` (a torch module whose output is a tensor
    or a sentence-transformers features mapping) advances a `Progress` of `total` sentences by its
    batch's rows. The hook only counts: the outputs are unchanged."""
    progress = Progress(what, total, unit="sentences", interval_s=interval_s, clock=clock)

    def hook(_module, _args, output) -> None:
        rows = output if hasattr(output, "shape") else output["sentence_embedding"]
        progress.update(int(rows.shape[0]))

    handle = module.register_forward_hook(hook)
    try:
        yield progress
    finally:
        handle.remove()
