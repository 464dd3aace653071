"""The promotion gate: may a newly registered version become `champion`? Pure: no I/O.

The registry gathers the inputs (scores of the challenger, of the current champion, or of the
reference variant `base` when there is no champion yet) and calls `decide`; every criterion checked
yields one reason, "ok: ..." or "fail: ...", and the version is promoted when none failed.

General variants (no domain tasks), in Spearman x100 points on the 7 STS tasks:
    avg(challenger) >= avg(champion) - epsilon
    task(challenger) >= task(champion) - delta          for each task
    first version:  avg(challenger) > avg(base) + first_margin

Domain variants (`variants.<V>.domain_tasks`; primary task P with metric m, e.g. nDCG@10), judged
against every reference R (register.domain.references: base and the general variants, each scored
on the variant's domain tasks in its evaluate stage), first version and challenger alike. With d*
the paired bootstrap resamples of m(challenger) - m(R) on the same queries or pairs:
    primary task, each R:  beats it,  p = P*(d* <= first_margin) < alpha  (significantly better);
    every other domain task T, each R:  not significantly worse beyond `margin`: refused when
        p = P*(d* >= -margin) < alpha;
    with a champion: not worse on P beyond `margin` (as for T, with d* against the champion);
    forgetting guard: avg_STS(challenger) >= avg_STS(R*) - general_max_drop, R* the best general
        reference (the highest 7-task STS average among the references).

Both kinds then pass the bias criterion (`gate_bias` below, thresholds `bias.gate`)
against the same reference. The `base` variant itself is the reference and is promoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simcse_ops.config import BiasConfig, BiasGateConfig, BootstrapConfig, RegisterConfig
from simcse_ops.stats import paired_bootstrap

EPS = 1e-9


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
    sts: dict[str, float]  # the tasks and "avg", of the serving backend `backend`
    bias: dict[str, Any] | None = None  # bias.json `summary`
    bias_tests: dict[str, Any] = field(default_factory=dict)  # bias.json `tests`
    domain: dict[str, DomainScore] = field(default_factory=dict)  # task -> score
    backend: str = "torch"  # whose STS row `sts` is (backends.BACKENDS)
    backends: dict[str, Any] = field(default_factory=dict)  # sts.json `backends` (card and tags)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    compared_to: str
    held: bool = False  # passed, but not promoted: registered from uncommitted inputs (registration)

    @property
    def label(self) -> str:
        return "held" if self.held else "promote" if self.promote else "reject"


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


def _paired(challenger: Scores, ref: Scores, label: str, task: str, g: GateInputs):
    """(test, head) of the paired bootstrap on `task`, or (None, a fail reason)."""
    mine, theirs = challenger.domain.get(task), ref.domain.get(task)
    if mine is None or mine.items is None:
        return None, f"fail: domain: the challenger has no per-item results on {task} (run the evaluate stage)"
    if theirs is None or theirs.items is None:
        return None, (f"fail: domain: {label} has no per-item results on {task}; not comparable "
                      f"(rerun the evaluate stage, re-register it, or promote with --force --reason)")
    if mine.fingerprint != theirs.fingerprint:
        return None, (f"fail: domain: {label} was scored on other {task} data (fingerprint "
                      f"{theirs.fingerprint} vs {mine.fingerprint}); not comparable (re-score it: rerun "
                      f"the register stage with --data, or promote with --force --reason)")
    b = g.bootstrap
    try:
        t = paired_bootstrap(mine.items, theirs.items, mine.metric, n_resamples=b.n_resamples,
                             confidence=b.confidence, seed=b.seed)
    except ValueError as e:
        return None, f"fail: domain: {task}: {label}'s results are not on the same items ({e})"
    ci = f"{b.confidence:.0%} CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}]"
    return t, (f"domain: {task} {mine.metric} {mine.value:.2f} vs {label} {theirs.value:.2f} "
               f"({t.diff:+.2f}, {ci}, n={t.n})")


def _superior(challenger: Scores, ref: Scores, label: str, task: str, g: GateInputs) -> tuple[bool, str]:
    """Significantly better than `ref` on `task` by more than first_margin."""
    t, head = _paired(challenger, ref, label, task, g)
    if t is None:
        return False, head
    dc = g.cfg.domain
    p = t.p_at_most(dc.first_margin)
    ok = p < dc.alpha
    return ok, f"{_ok(ok)}: {head}; p(diff <= {dc.first_margin}) = {p:.4f}; must beat it at alpha {dc.alpha}"


def _non_inferior(challenger: Scores, ref: Scores, label: str, task: str, g: GateInputs) -> tuple[bool, str]:
    """Not significantly worse than `ref` on `task` by more than margin."""
    t, head = _paired(challenger, ref, label, task, g)
    if t is None:
        return False, head
    dc = g.cfg.domain
    p = t.p_at_least(-dc.margin)
    ok = not p < dc.alpha
    return ok, (f"{_ok(ok)}: {head}; p(diff >= -{dc.margin}) = {p:.4f}; refused when below alpha "
                f"{dc.alpha}, i.e. significantly worse than the margin")


def best_general(references: Mapping[str, Scores]) -> str:
    """The best general reference: the highest 7-task STS average (the first on a tie)."""
    return max(references, key=lambda r: references[r].sts["avg"])


def _domain_gate(challenger: Scores, champion: Scores | None, champion_label: str,
                 references: Mapping[str, Scores], g: GateInputs) -> tuple[bool, list[str]]:
    """The domain rule of the module docstring: every reference on every domain task, the
    champion on the primary task, the forgetting guard against the best general reference."""
    ok, reasons = True, []
    others = [t for t in challenger.domain if t != g.primary]
    for label, ref in references.items():
        passed, why = _superior(challenger, ref, label, g.primary, g)
        ok, reasons = ok and passed, reasons + [why]
        for task in others:
            passed, why = _non_inferior(challenger, ref, label, task, g)
            ok, reasons = ok and passed, reasons + [why]
    if champion is not None:
        passed, why = _non_inferior(challenger, champion, champion_label, g.primary, g)
        ok, reasons = ok and passed, reasons + [why]
    best = best_general(references)
    passed, more = _forgetting(challenger, references[best], f"{best} (best general reference)", g)
    return ok and passed, reasons + more


def _summary_of(obj: Mapping[str, Any], who: str) -> tuple[float, int, int]:
    """(mean_abs_effect_size, n_significant, n_tests) from a summary or a whole bias.json mapping.

    Values may be strings (as read back from MLflow tags)."""
    summary = obj.get("summary", obj)
    try:
        return (
            float(summary["mean_abs_effect_size"]),
            int(float(summary["n_significant"])),
            int(float(summary["n_tests"])),
        )
    except KeyError as e:
        raise ValueError(
            f"{who} bias summary lacks {e.args[0]!r}; expected mean_abs_effect_size, n_significant, "
            f"n_tests (metrics/<variant>/bias.json `summary`)"
        ) from None
    except (TypeError, ValueError):
        raise ValueError(f"{who} bias summary has a non-numeric value: {dict(summary)!r}") from None


def gate_bias(
    challenger_summary: Mapping[str, Any],
    champion_summary: Mapping[str, Any] | None,
    cfg: BiasConfig | BiasGateConfig,
) -> tuple[bool, list[str]]:
    """May the challenger replace the champion as far as bias goes? -> (ok, reasons).

    Criteria (params.yaml `bias.gate`; a null threshold skips its criterion):
    - challenger mean |d| <= champion mean |d| + max_mean_abs_effect_size_increase
    - challenger n_significant <= champion n_significant + max_n_significant_increase
    Summaries must come from the same number of tests, otherwise they are not comparable and the
    gate fails. Every criterion checked yields one reason, prefixed "ok: bias:" or "fail: bias:"
    (the gate's convention). With no reference summary (`None`: no champion, or one
    registered without bias results) the criterion holds vacuously.
    """
    g = cfg.gate if isinstance(cfg, BiasConfig) else cfg
    c_mean, c_sig, c_n = _summary_of(challenger_summary, "challenger")
    if champion_summary is None:
        return True, ["ok: bias: no reference bias summary to compare with"]
    k_mean, k_sig, k_n = _summary_of(champion_summary, "champion")
    if c_n != k_n:
        return False, [
            f"fail: bias: challenger was probed on {c_n} SEAT tests, champion on {k_n}; "
            f"rerun the bias stage on both with the same bias.tests"
        ]
    ok = True
    reasons: list[str] = []
    if g.max_mean_abs_effect_size_increase is not None:
        limit = k_mean + g.max_mean_abs_effect_size_increase
        passed = c_mean <= limit + 1e-12
        ok &= passed
        reasons.append(
            f"{'ok' if passed else 'fail'}: bias: mean |effect size| {c_mean:.4f} vs champion {k_mean:.4f} "
            f"({c_mean - k_mean:+.4f}; allowed +{g.max_mean_abs_effect_size_increase:.4f})"
        )
    if g.max_n_significant_increase is not None:
        limit_n = k_sig + g.max_n_significant_increase
        passed = c_sig <= limit_n
        ok &= passed
        reasons.append(
            f"{'ok' if passed else 'fail'}: bias: {c_sig} significant SEAT tests of {c_n} vs champion {k_sig} "
            f"({c_sig - k_sig:+d}; allowed +{g.max_n_significant_increase})"
        )
    return bool(ok), reasons



def decide(challenger: Scores, champion: Scores | None, champion_label: str, base: Scores | None,
           g: GateInputs, references: Mapping[str, Scores] | None = None) -> Decision:
    """The promotion gate; every criterion checked yields one reason ("ok: ..." / "fail: ...").

    `references` ({label: scores}, each with its domain results on the challenger's items) judge a
    domain variant; None: the base variant alone (`base`)."""
    cfg = g.cfg
    if g.primary is not None and not g.is_base_variant:
        refs = dict(references) if references else ({cfg.base_variant: base} if base is not None else {})
        if not refs:
            return Decision(False, ["fail: no references to judge a domain variant against; the register "
                                    "stage passes --base-metrics (dvc.yaml) and the evaluate stage scores "
                                    "register.domain.references"], "nothing")
        if champion is not None:
            missing = [t for t in [*g.tasks, "avg"] if t not in champion.sts]
            if missing:
                return Decision(False, [f"fail: {champion_label} has no score for {', '.join(missing)}; "
                                        f"not comparable (promote with --force if intended)"], champion_label)
        label = ", ".join(refs) + (f" and {champion_label}" if champion is not None else "")
        ok, reasons = _domain_gate(challenger, champion, champion_label, refs, g)
        bias_ref, bias_label = (champion, champion_label) if champion is not None else (
            refs.get(cfg.base_variant, base), cfg.base_variant)
        return _with_bias(ok, reasons, challenger, bias_ref, bias_label, label, g)
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
                                "the register stage passes --base-metrics (dvc.yaml); "
                                "`simcse-ops promote` reads it there or takes --base-metrics DIR"], "nothing")
    else:
        ref, label, first = base, cfg.base_variant, True

    if first:
        d = challenger.sts["avg"] - base.sts["avg"]
        ok = d > cfg.first_margin
        reasons = [f"{_ok(ok)}: first version: avg {challenger.sts['avg']:.2f} vs {label} "
                   f"{base.sts['avg']:.2f} ({d:+.2f}; must beat it by more than {cfg.first_margin})"]
    else:
        ok, reasons = _general(challenger, ref, label, g)

    return _with_bias(ok, reasons, challenger, ref, label, label, g)


def _with_bias(ok: bool, reasons: list[str], challenger: Scores, ref: Scores | None, ref_label: str,
               compared_to: str, g: GateInputs) -> Decision:
    """The bias criterion against `ref` (the champion, else the base variant) added to a decision."""
    if g.cfg.bias_gate:
        if challenger.bias is None:
            ok = False
            reasons = reasons + ["fail: bias: the challenger has no bias summary (run the bias stage)"]
        else:
            b_ok, b_reasons = gate_bias(challenger.bias, ref.bias if ref is not None else None, g.bias_cfg)
            ok = ok and b_ok
            reasons = reasons + [f"{r} (vs {ref_label})" for r in b_reasons]
    return Decision(bool(ok), reasons, compared_to)
