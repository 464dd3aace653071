"""The model card of a registered version: markdown, built from what registration gathered.

`model_card` writes, in order: the title and description, the data (sources, DVC md5 of the
datasets, git commit), the hyper-parameters, the hardware that trained it (train.json's effective
precision and CPU class: bf16 and fp32 metrics differ slightly), the STS table (the variant beside base and the
champion, on the served backend), the serving backends (`backends_section`), the domain tasks (`domain_table`: bootstrap intervals per model), the bias table
(SEAT), the promotion gate's decision and reasons, and the intended use and limits. The card is
uploaded with the model (`model_card/model_card.md` of the run, and inside the pyfunc model) and
is the version's description (cut to fit: `registration._description`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from simcse_ops.files import read_json
from simcse_ops.gate import Decision, Scores


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def model_card(
    name: str,
    variant: str,
    vcfg: Any,
    params: Any,
    scores: Scores,
    base: Scores | None,
    champion: Scores | None,
    champion_label: str,
    decision: Decision,
    lineage: Mapping[str, str],
    tasks: list[str],
    domain_path: Path | None = None,
    train_path: Path | None = None,
    references: Mapping[str, Scores] | None = None,
) -> str:
    """Markdown: data, hyper-parameters, the 7-task table (with base or a domain variant's
    references, and the champion), the domain tasks (with intervals, every reference, BM25 and the
    champion beside the variant, and the paired differences to each reference), the bias table,
    the gate, use and limits."""
    lines = [f"# {name}", "", vcfg.description or f"SimCSE variant `{variant}`.", ""]
    lines += _data_section(vcfg, params, lineage)
    lines += _hyperparameters_section(vcfg)
    if train_path is not None and Path(train_path).is_file():
        lines += training_hardware_section(read_json(train_path))
    others = dict(references) if references else ({"base": base} if base is not None else {})
    lines += _sts_section(variant, scores, others, champion, champion_label, tasks)
    lines += backends_section(scores, served=params.serve.backend)
    if domain_path is not None and Path(domain_path).is_file():
        lines += domain_table(read_json(domain_path), champion, champion_label)
    lines += _bias_section(scores)
    lines += _gate_section(decision)
    lines += _use_section(vcfg)
    return "\n".join(lines)


def _data_section(vcfg: Any, params: Any, lineage: Mapping[str, str]) -> list[str]:
    """The training data, the DVC md5 of the datasets and the code's git commit."""
    lines = ["## Data", ""]
    if vcfg.corpus:
        for c in vcfg.corpus:
            src = params.sources[c]
            lines.append(f"- `{c}` ({src.format}, role {src.role}): {', '.join(src.paths)}")
    else:
        lines.append(f"- none: `{vcfg.base_model}` as published (method `{vcfg.method}`)")
    dvc = {k[4:]: v for k, v in lineage.items() if k.startswith("dvc.") and k != "dvc.lock"}
    if "dvc.lock" in lineage:
        lines += ["", "No dvc.lock: the stages ran outside `dvc repro`, so no dataset hashes are recorded."]
    if dvc:
        lines += ["", "DVC md5 of the datasets (dvc.lock):", ""]
        lines += [f"- `{k}`: `{v}`" for k, v in sorted(dvc.items())]
    lines += ["", f"Code: git commit `{lineage.get('git.commit', 'unknown')}`"
              + (" (uncommitted changes)" if lineage.get("git.dirty") == "true" else ""), ""]
    return lines


def _hyperparameters_section(vcfg: Any) -> list[str]:
    hp = dataclasses.asdict(vcfg)
    if vcfg.method == "pretrained":  # not trained: only what defines the encoder applies
        hp = {k: hp[k] for k in ("method", "base_model", "pooler") if k in hp}
    return ["## Hyper-parameters", "",
            _table(["parameter", "value"], [[k, f"`{v}`"] for k, v in hp.items() if k != "description"])]


def training_hardware_section(train: Mapping[str, Any]) -> list[str]:
    """The effective precision and the machine of a training (train.json); the metrics of a
    bf16 and an fp32 training differ slightly (README "Precision")."""
    if not train.get("steps"):
        return ["", "## Training hardware", "", "Not trained: the base encoder as published.", ""]
    if "precision" not in train:
        return ["", "## Training hardware", "", "Not recorded (trained before train.json named it).", ""]
    device = train.get("gpu") or f"{train.get('cpu_model')} ({train.get('cpu_class')})"
    return ["", "## Training hardware", "",
            f"Trained in **{train['precision']}** on {device}, {train.get('torch_threads', '?')} threads. "
            "Metrics of a bf16 and an fp32 training differ slightly; `dvc repro` reproduces these "
            "figures exactly only in the same precision.", ""]


def _sts_section(variant: str, scores: Scores, others: Mapping[str, Scores], champion: Scores | None,
                 champion_label: str, tasks: list[str]) -> list[str]:
    """The 7 STS tasks and their average: the variant, base (or a domain variant's references)
    and the champion side by side."""
    header = ["task", variant, *others]
    if champion is not None:
        header.append(champion_label)
    rows = []
    for t in [*tasks, "avg"]:
        r = [t if t != "avg" else "**avg**", f"{scores.sts[t]:.2f}"]
        r += [f"{o.sts.get(t, float('nan')):.2f}" for o in others.values()]
        if champion is not None:
            r.append(f"{champion.sts.get(t, float('nan')):.2f}" if t in champion.sts else "-")
        rows.append(r)
    return ["", "## STS (Spearman x100 of cosine, 'all' setting)", "", _table(header, rows), ""]


def backends_section(scores: Scores, served: str | None = None) -> list[str]:
    """Which backend the version serves (and whose scores the gate used), and per backend of
    sts.json `backends`: STS avg, min per-sentence cosine to torch, whether it is offered, and the
    CPU class those were measured on (OpenVINO's precision, so its parity, depends on it)."""
    lines = ["## Serving backends", ""]
    if served == "auto":
        lines += [f"The model serves with **auto**: when it loads, the fastest on that CPU of torch and the "
                  f"offered backends below (`serving.choose_backend`). The STS table above and the promotion "
                  f"gate use the offered backend with the lowest STS avg, **{scores.backend}**.", ""]
    else:
        lines += [f"The model serves with **{scores.backend}** (params.yaml `serve.backend`); the STS table "
                  f"above and the promotion gate use its scores.", ""]
    if not scores.backends:
        return lines + ["Only torch was evaluated (sts.json has no `backends`).", ""]
    rows = []
    for name, b in scores.backends.items():
        cos = f"{b['parity']['min']:.4f}" if "parity" in b else "-"
        avg = f"{b['avg']:.2f}" if "avg" in b else "-"
        offered = ("yes" if b["offered"] else "no") if "offered" in b else "yes"
        rows.append([f"**{name}**" if name == scores.backend else name, avg, cos, offered, b.get("cpu_class", "-")])
    lines += [_table(["backend", "STS avg", "min cosine to torch", "offered", "measured on"], rows), ""]
    return lines + [f"- {name}: {b['reason']}" for name, b in scores.backends.items() if "reason" in b] + [""]


def domain_table(domain: Mapping[str, Any], champion: Scores | None = None,
                 champion_label: str = "champion") -> list[str]:
    """Markdown lines: each domain task's headline metric with its bootstrap interval per model
    (the variant, the base encoder, BM25 on retrieval tasks, the current champion)."""
    models = list(domain["models"])
    conf = domain.get("bootstrap", {}).get("confidence", 0.95)
    header = ["task", "metric", "n", *models]
    if champion is not None and champion.domain:
        header.append(champion_label)
    rows = []
    for task, t in domain["tasks"].items():
        m = t["metric"]
        row = [task + (" (primary)" if task == domain.get("primary") else ""), m, str(t["n"])]
        for model in models:
            r = t["results"].get(model)
            row.append("-" if r is None else f"{r['metrics'][m]:.2f} [{r['ci'][m][0]:.2f}, {r['ci'][m][1]:.2f}]")
        if champion is not None and champion.domain:
            c = champion.domain.get(task)
            row.append("-" if c is None else f"{c.value:.2f}")
        rows.append(row)
    lines = [f"## Domain tasks ({conf:.0%} bootstrap intervals, reported split: test, BIOSSES's visible "
             f"half)", "", _table(header, rows), ""]
    refs = list(domain.get("references") or [])
    if refs and any(t.get("vs_references") for t in domain["tasks"].values()):
        diffs = []
        for task, t in domain["tasks"].items():
            vs = t.get("vs_references") or {}
            diffs.append([task, t["metric"], *(
                "-" if r not in vs else f"{vs[r]['diff']:+.2f} [{vs[r]['ci'][0]:+.2f}, {vs[r]['ci'][1]:+.2f}]"
                for r in refs)])
        lines += [f"{domain['variant']} minus each reference, paired bootstrap on the same items:", "",
                  _table(["task", "metric", *(f"vs {r}" for r in refs)], diffs), ""]
    return lines


def _bias_section(scores: Scores) -> list[str]:
    """SEAT effect sizes and p-values per test, and the bias stage's summary."""
    lines = ["## Bias (SEAT effect sizes, permutation p-values, Holm-Bonferroni)", ""]
    if scores.bias_tests:
        rows = []
        for test, r in sorted(scores.bias_tests.items()):
            p = r.get("p_value")
            rows.append([test, f"{float(r.get('effect_size', float('nan'))):+.3f}",
                         "-" if p is None else f"{float(p):.4f}", "yes" if r.get("significant") else "no"])
        lines += [_table(["test", "effect size d", "p-value", "significant"], rows), ""]
    if scores.bias:
        lines.append("Summary: " + ", ".join(f"{k} = {v}" for k, v in scores.bias.items()))
        lines.append("")
    if not scores.bias and not scores.bias_tests:
        lines += ["No bias results.", ""]
    return lines


def _gate_section(decision: Decision) -> list[str]:
    lines = ["## Promotion gate", "", f"Decision: **{decision.label}** (compared with {decision.compared_to})", ""]
    return lines + [f"- {r}" for r in decision.reasons]


def _use_section(vcfg: Any) -> list[str]:
    return ["", "## Intended use and limits", "",
            "- Intended use: English sentence embeddings for semantic similarity, retrieval and "
            "clustering; compare embeddings with cosine similarity.",
            f"- Trained with sequences of at most {vcfg.max_seq_length} tokens; inference uses the "
            "model's own maximum length.",
            "- Scores above are on the public STS benchmarks; performance on other domains, other "
            "languages and long documents is not measured here.",
            "- SEAT measures associations between embeddings of template sentences; a small or "
            "non-significant effect does not show the absence of social bias. Do not use the "
            "model for decisions about people without a task-specific bias evaluation.",
            ""]
