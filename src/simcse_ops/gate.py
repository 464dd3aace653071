"""The promotion gate: may a newly registered version become `champion`? Pure: no I/O.

The registry gathers the inputs (scores of the challenger, of the current champion, or of the
reference variant `base` when there is no champion yet) and calls `decide`; every criterion checked
yields one reason, "ok: ..." or "fail: ...", and the version is promoted when none failed.

General variants (no domain tasks), in Spearman x100 points on the 7 STS tasks:
    avg(challenger) >= avg(champion) - epsilon
    task(challenger) >= task(champion) - delta          for each task
    first version:  avg(challenger) > avg(base) + first_margin

Domain variants (`variants.<V>.domain_tasks`; primary task P with metric m, e.g. nDCG@10):
    with a champion: not worse on P beyond `margin`, by a paired bootstrap over P's queries or
        pairs: with d* the resampled differences m(challenger) - m(champion) on the same items,
        the challenger is refused when  p = P*(d* >= -margin) < alpha  (significantly worse
        than -margin);
    first version: beats base on P:  p = P*(d* <= first_margin) < alpha  (significantly better);
    forgetting guard: avg_STS(challenger) >= avg_STS(reference) - general_max_drop.

Both kinds then pass the bias criterion (`simcse_ops.bias.gate_bias`, thresholds `bias.gate`)
against the same reference. The `base` variant itself is the reference and is promoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simcse_ops.bias import BiasConfig, gate_bias
from simcse_ops.config import BootstrapConfig
from simcse_ops.stats import paired_bootstrap

EPS = 1e-9


@dataclass(frozen=True)
class DomainGateConfig:
    """params.yaml `register.domain`: the gate of a domain variant (points of its primary metric)."""

    alpha: float = 0.05  # one-sided significance level of the paired bootstrap tests
    margin: float = 0.5  # a challenger may be worse than the champion by this, not significantly more
    first_margin: float = 0.0  # a first version must beat base by significantly more than this
    general_max_drop: float = 0.5  # forgetting guard: the 7-task STS avg may fall at most this


@dataclass(frozen=True)
class RegisterConfig:
    """params.yaml `register`: model naming and the promotion gate (Spearman x100 points)."""

    model_prefix: str = "simcse-"
    epsilon: float = 0.5  # the average may fall below the champion's by at most this
    delta: float = 1.0  # no single STS task may fall below the champion's by more than this
    base_variant: str = "base"  # the reference a first version must beat
    first_margin: float = 0.0  # a first version must exceed base avg by more than this
    bias_gate: bool = True  # apply simcse_ops.bias.gate_bias (thresholds in params `bias.gate`)
    domain: DomainGateConfig = field(default_factory=DomainGateConfig)


@dataclass(frozen=True)
class DomainScore:
    """One model on one domain task: the headline metric and, for paired tests, its items."""

    metric: str
    value: float  # x100 on the task's reported split
    ci: tuple[float, float] | None = None
    items: Mapping[str, Sequence] | None = None  # per query / pair (see simcse_ops.stats)
    fingerprint: str | None = None  # of the task's content (evaluation.DomainTaskData.fingerprint)


@dataclass(frozen=True)
class Scores:
    sts: dict[str, float]  # the tasks and "avg"
    bias: dict[str, Any] | None = None  # bias.json `summary`
    bias_tests: dict[str, Any] = field(default_factory=dict)  # bias.json `tests`
    domain: dict[str, DomainScore] = field(default_factory=dict)  # task -> score


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    compared_to: str

    @property
    def label(self) -> str:
        return "promote" if self.promote else "reject"


@dataclass(frozen=True)
class GateInputs:
    """Everything `decide` needs besides the scores."""

    tasks: list[str]  # the general STS tasks
    cfg: RegisterConfig
    bias_cfg: BiasConfig | None = None
    is_base_variant: bool = False
    primary: str | None = None  # the variant's primary domain task; None: a general variant
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


def _ok(passed: bool) -> str:
    return "ok" if passed else "fail"


def _general(challenger: Scores, ref: Scores, label: str, g: GateInputs) -> tuple[bool, list[str]]:
    """epsilon on the average and delta on every task."""
    cfg, tasks = g.cfg, g.tasks
    d = challenger.sts["avg"] - ref.sts["avg"]
    ok = d >= -cfg.epsilon - EPS
    reasons = [f"{_ok(ok)}: avg {challenger.sts['avg']:.2f} vs {label} {ref.sts['avg']:.2f} "
               f"({d:+.2f}; may drop by at most epsilon {cfg.epsilon})"]
    failed = [t for t in tasks if ref.sts[t] - challenger.sts[t] > cfg.delta + EPS]
    for t in failed:
        reasons.append(f"fail: {t} {challenger.sts[t]:.2f} vs {label} {ref.sts[t]:.2f} "
                       f"(drop {ref.sts[t] - challenger.sts[t]:.2f} > delta {cfg.delta})")
    if not failed:
        worst = max(tasks, key=lambda t: ref.sts[t] - challenger.sts[t])
        reasons.append(f"ok: no task drops by more than delta {cfg.delta} (largest change: "
                       f"{worst} {challenger.sts[worst] - ref.sts[worst]:+.2f})")
    return ok and not failed, reasons


def _forgetting(challenger: Scores, ref: Scores, label: str, g: GateInputs) -> tuple[bool, list[str]]:
    drop = g.cfg.domain.general_max_drop
    d = challenger.sts["avg"] - ref.sts["avg"]
    ok = d >= -drop - EPS
    return ok, [f"{_ok(ok)}: forgetting guard: general STS avg {challenger.sts['avg']:.2f} vs {label} "
                f"{ref.sts['avg']:.2f} ({d:+.2f}; may fall at most general_max_drop {drop})"]


def _domain(challenger: Scores, ref: Scores, label: str, g: GateInputs, first: bool) -> tuple[bool, list[str]]:
    """The paired bootstrap test on the primary task (see the module docstring)."""
    task, dc = g.primary, g.cfg.domain
    mine, theirs = challenger.domain.get(task), ref.domain.get(task)
    if mine is None or mine.items is None:
        return False, [f"fail: domain: the challenger has no per-item results on {task} "
                       f"(run the evaluate stage)"]
    if theirs is None or theirs.items is None:
        return False, [f"fail: domain: {label} has no per-item results on {task}; not comparable "
                       f"(re-register it, or promote with --force --reason)"]
    if mine.fingerprint != theirs.fingerprint:
        return False, [f"fail: domain: {label} was scored on other {task} data (fingerprint "
                       f"{theirs.fingerprint} vs {mine.fingerprint}); not comparable (re-score it: rerun "
                       f"the register stage with --data, or promote with --force --reason)"]
    b = g.bootstrap
    try:
        t = paired_bootstrap(mine.items, theirs.items, mine.metric, n_resamples=b.n_resamples,
                             confidence=b.confidence, seed=b.seed)
    except ValueError as e:
        return False, [f"fail: domain: {task}: {label}'s results are not on the same items ({e})"]
    ci = f"{b.confidence:.0%} CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}]"
    head = (f"domain: {task} {mine.metric} {mine.value:.2f} vs {label} {theirs.value:.2f} "
            f"({t.diff:+.2f}, {ci}, n={t.n})")
    if first:
        p = t.p_at_most(dc.first_margin)
        ok = p < dc.alpha
        why = f"p(diff <= {dc.first_margin}) = {p:.4f}; must beat it at alpha {dc.alpha}"
    else:
        p = t.p_at_least(-dc.margin)
        ok = not p < dc.alpha
        why = (f"p(diff >= -{dc.margin}) = {p:.4f}; refused when below alpha {dc.alpha}, "
               f"i.e. significantly worse than the margin")
    return ok, [f"{_ok(ok)}: {head}; {why}"]


def decide(challenger: Scores, champion: Scores | None, champion_label: str, base: Scores | None,
           g: GateInputs) -> Decision:
    """The promotion gate; every criterion checked yields one reason ("ok: ..." / "fail: ...")."""
    cfg = g.cfg
    if champion is not None:
        ref, label, first = champion, champion_label, False
        missing = [t for t in [*g.tasks, "avg"] if t not in champion.sts]
        if missing:
            return Decision(False, [f"fail: {label} has no score for {', '.join(missing)}; "
                                    f"not comparable (promote with --force if intended)"], label)
    elif g.is_base_variant:
        return Decision(True, [f"ok: {cfg.base_variant} is the reference every variant is compared with"],
                        "itself (the reference)")
    elif base is None:
        return Decision(False, ["fail: no champion and no base metrics to compare with; "
                                "pass --base-metrics metrics/base"], "nothing")
    else:
        ref, label, first = base, cfg.base_variant, True

    if g.primary is not None:
        ok_d, reasons = _domain(challenger, ref, label, g, first)
        ok_f, more = _forgetting(challenger, ref, label, g)
        ok, reasons = ok_d and ok_f, reasons + more
    elif first:
        d = challenger.sts["avg"] - base.sts["avg"]
        ok = d > cfg.first_margin
        reasons = [f"{_ok(ok)}: first version: avg {challenger.sts['avg']:.2f} vs {label} "
                   f"{base.sts['avg']:.2f} ({d:+.2f}; must beat it by more than {cfg.first_margin})"]
    else:
        ok, reasons = _general(challenger, ref, label, g)

    if cfg.bias_gate:
        if challenger.bias is None:
            ok = False
            reasons.append("fail: bias: the challenger has no bias summary (run the bias stage)")
        else:
            b_ok, b_reasons = gate_bias(challenger.bias, ref.bias, g.bias_cfg)
            ok = ok and b_ok
            reasons += [f"{r} (vs {label})" for r in b_reasons]
    return Decision(bool(ok), reasons, label)
