"""Typed, frozen view of `params.yaml`, the single source of configuration.

`load_params()` reads the file once and builds nested frozen dataclasses. Unknown keys, missing
required keys and values of the wrong type raise `ConfigError` naming the file and the dotted key
(`params.yaml: variants.sup-nli.lr: expected a number, got 'fast'`), so a typo never silently
falls back to a default.

Each stage reads only its own section; DVC tracks those keys through the `params:` lists in
`dvc.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

DATA_ROOT_ENV = "SIMCSE_DATA_ROOT"

# eval-domain: a domain evaluation set (pair classification or retrieval; never trained on).
Role = Literal["eval-sts", "eval-domain", "train-unsup", "train-sup", "domain", "bias"]


class ConfigError(ValueError):
    """A `params.yaml` value that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/data"  # relative to the directory holding params.yaml


@dataclass(frozen=True)
class SourceConfig:
    format: str
    role: Role
    paths: tuple[str, ...]  # relative to data.root; glob patterns allowed, matched in sorted order
    options: dict[str, Any] = field(default_factory=dict)  # reader-specific keyword arguments


@dataclass(frozen=True)
class IngestConfig:
    # Fraction of malformed records a reader may skip (counted and reported) before it fails.
    # 0.0 means any malformed record is an error.
    max_bad_fraction: float = 0.0


@dataclass(frozen=True)
class StsTaskConfig:
    source: str
    split: str | None = None  # for sources that carry several splits (stsb, sick)


DomainMetric = Literal["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "ap", "roc_auc"]


@dataclass(frozen=True)
class DomainTaskConfig:
    """A domain evaluation task: an `eval-domain` source of kind `pairs` (pair classification)
    or `retrieval` (queries, documents, judgments). Scored on `split`, selected on `dev_split`."""

    source: str
    metric: DomainMetric | None = None  # the task's headline metric; None: ndcg@10 / ap by kind
    split: str = "test"  # reported (and gated) split
    dev_split: str = "dev"  # model selection (best checkpoint, any hyper-parameter choice)


@dataclass(frozen=True)
class BootstrapConfig:
    """Percentile bootstrap over a task's queries or pairs (groups when the pairs have them)."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class EvaluateConfig:
    tasks: dict[str, StsTaskConfig]
    batch_size: int = 128
    max_seq_length: int | None = None  # None: the model's own maximum (never the training length)
    device: str = "auto"
    # STS-B dev, used during training for model selection (variants without a primary domain task).
    dev_task: StsTaskConfig = StsTaskConfig(source="stsb", split="dev")
    # Domain tasks by name; a variant lists the ones it is judged on (variants.<V>.domain_tasks).
    domain_tasks: dict[str, DomainTaskConfig] = field(default_factory=dict)
    # Documents longer than the model's maximum length: `truncate` (the encoder cuts them) or
    # `max_chunk` (windows of the maximum length, a document scores its best window).
    long_documents: Literal["truncate", "max_chunk"] = "truncate"
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)


@dataclass(frozen=True)
class VariantConfig:
    # unsup / sup: SimCSE; pairs: InfoNCE on (anchor, positive) pairs; tsdae: denoising auto-encoder
    method: Literal["pretrained", "unsup", "sup", "pairs", "tsdae"]
    base_model: str = "default"
    corpus: tuple[str, ...] = ()  # source names (after dedup) the variant trains on
    pooler: Literal["cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2"] = "avg"
    mlp: bool = True  # SimCSE's Linear+tanh head on the pooled vector (never for cls_before_pooler)
    mlp_only_train: bool = True  # drop the head from the exported inference model
    temperature: float = 0.05
    hard_negative_weight: float = 0.0  # log-weight added to each anchor's own hard-negative logit
    batch_size: int = 64  # global batch (split across torchrun ranks)
    lr: float = 3e-5
    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_length: int = 32  # training length only; the exported model keeps the base's length
    seed: int = 42
    eval_steps: int = 125  # STS-B dev every N steps (0: only at the end); the best step is kept
    checkpoint_steps: int = 250  # resumable checkpoint every N steps (0: none)
    max_train_samples: int | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    length_groups: int = 4  # forward passes per step over rows of similar length (less padding)
    dropout_impl: Literal["auto", "native", "fast"] = "auto"  # auto: FastDropout on CPU, torch's on CUDA
    tsdae_deletion_ratio: float = 0.6  # tsdae: probability of deleting each input word (TSDAE paper: 0.6)
    description: str = ""
    # Domain evaluation suite: names in evaluate.domain_tasks, scored next to the 7 STS tasks.
    # A variant with domain tasks is a *domain variant*: `primary_task` (default: the first)
    # selects its best checkpoint on the task's dev split and decides the registry gate.
    domain_tasks: tuple[str, ...] = ()
    primary_task: str | None = None

    @property
    def primary(self) -> str | None:
        return self.primary_task or (self.domain_tasks[0] if self.domain_tasks else None)


@dataclass(frozen=True)
class Params:
    data: DataConfig
    sources: dict[str, SourceConfig]
    ingest: IngestConfig
    evaluate: EvaluateConfig
    variants: dict[str, VariantConfig]
    # Sections owned by later stages are kept as plain mappings until their stage types them.
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path = Path("params.yaml")

    @property
    def data_root(self) -> Path:
        """`data.root` resolved against params.yaml's folder; `$SIMCSE_DATA_ROOT` overrides it."""
        env = os.environ.get(DATA_ROOT_ENV)
        root = Path(env) if env else Path(self.data.root)
        if not root.is_absolute():
            root = (self.path.parent if not env else Path.cwd()) / root
        return root.resolve()

    def sources_with_role(self, *roles: str) -> dict[str, SourceConfig]:
        return {n: s for n, s in self.sources.items() if s.role in roles}

    def domain_variants(self) -> dict[str, VariantConfig]:
        """The domain variants (the one definition): variants that train and either list
        `domain_tasks` or train on `role: domain` sources only. (`base` scores the domain tasks
        as the reference, but does not train.) The retrain-domain flow retrains them."""
        return {n: v for n, v in self.variants.items() if v.method != "pretrained" and (
            v.domain_tasks or (v.corpus and all(self.sources[s].role == "domain" for s in v.corpus)))}

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            known = ", ".join(sorted(self.variants))
            raise ConfigError(f"{self.path}: variants: no variant {name!r}; known: {known}")
        return self.variants[name]


# Top-level sections typed here; any other top-level key is kept verbatim in `Params.extra` only
# if listed in OPEN_SECTIONS (sections whose stage validates them itself).
OPEN_SECTIONS = frozenset({"dedup", "validate", "bias", "register", "mlflow", "flows", "serve"})


# --------------------------------------------------------------------------------------------
# Strict builder


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, file: Path) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, file)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{file}: {where}: unexpected {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{file}: {where}: {value!r} is not one of {', '.join(map(repr, allowed))}"
            )
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{file}: {where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]", file) for i, v in enumerate(value))
    if origin is dict:
        key_tp, val_tp = get_args(tp)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: {where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, val_tp, f"{where}.{k}", file) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, file)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{file}: {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{file}: {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads `3e-5` (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{file}: {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{file}: {where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, raw: Any, where: str, file: Path) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{file}: {where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], sub, file)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{file}: {sub}: required key is missing")
    return cls(**kwargs)


def parse_params(raw: dict[str, Any], path: Path | str = "params.yaml") -> Params:
    """Build `Params` from an already-parsed mapping (used by tests and `load_params`)."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    typed = {"data", "sources", "ingest", "evaluate", "variants"}
    unknown = sorted(set(raw) - typed - OPEN_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level section(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(typed | OPEN_SECTIONS))}"
        )
    core = {k: raw[k] for k in typed if k in raw}
    params = _build(Params, {**core, "extra": {}}, "", path)
    extra = {k: raw[k] for k in OPEN_SECTIONS if k in raw}
    params = dataclasses.replace(params, extra=extra, path=path)
    for name, task in params.evaluate.tasks.items():
        if task.source not in params.sources:
            raise ConfigError(
                f"{path}: evaluate.tasks.{name}.source: no source {task.source!r} in sources"
            )
    for name, task in params.evaluate.domain_tasks.items():
        src = params.sources.get(task.source)
        if src is None:
            raise ConfigError(
                f"{path}: evaluate.domain_tasks.{name}.source: no source {task.source!r} in sources"
            )
        if src.role != "eval-domain":
            raise ConfigError(
                f"{path}: evaluate.domain_tasks.{name}.source: {task.source!r} has role {src.role!r}; "
                f"expected eval-domain (an evaluation set is never trained on)"
            )
    b = params.evaluate.bootstrap
    if b.n_resamples < 100 or not 0.5 < b.confidence < 1.0:
        raise ConfigError(f"{path}: evaluate.bootstrap: expected n_resamples >= 100 and "
                          f"0.5 < confidence < 1, got {b.n_resamples} and {b.confidence}")
    for vname, v in params.variants.items():
        for t in v.domain_tasks:
            if t not in params.evaluate.domain_tasks:
                raise ConfigError(f"{path}: variants.{vname}.domain_tasks: no task {t!r} in "
                                  f"evaluate.domain_tasks (known: {', '.join(params.evaluate.domain_tasks)})")
        if v.primary_task is not None and v.primary_task not in v.domain_tasks:
            raise ConfigError(f"{path}: variants.{vname}.primary_task: {v.primary_task!r} is not one "
                              f"of its domain_tasks {list(v.domain_tasks)}")
        for c in v.corpus:
            if c not in params.sources:
                raise ConfigError(f"{path}: variants.{vname}.corpus: no source {c!r} in sources")
        if v.length_groups < 1:
            raise ConfigError(f"{path}: variants.{vname}.length_groups: expected an integer >= 1 "
                              f"(1 = one padded forward pass per step), got {v.length_groups}")
    return params


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params")
    with path.open(encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_params(raw, path)


def section(params: Params, name: str, cls: type):
    """Type an open section (`dedup`, `validate`, `bias`, `register`, ...) with its stage's own
    frozen dataclass, with the same strict checks as the core sections."""
    if name not in OPEN_SECTIONS:
        raise ConfigError(f"{params.path}: {name!r} is not an open section")
    return _build(cls, params.extra.get(name, {}), name, params.path)
