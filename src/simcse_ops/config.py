"""Typed, frozen view of `params.yaml`, the single source of configuration.

`load_params()` reads the file once and builds nested frozen dataclasses. Unknown keys, missing
required keys and values of the wrong type raise `ConfigError` naming the file and the dotted key
(`params.yaml: variants.sup-nli.lr: expected a number, got 'fast'`), so a typo never silently
falls back to a default.

Each stage reads only its own section; DVC tracks those keys through the `params:` lists in
`dvc.yaml`.

Defaults: a key params.yaml states (a section's key, at any depth) has its value there, and the
dataclass default, where one exists, must equal it (tests/test_config.py lists every
disagreement). A key params.yaml omits (a rule's `enabled`, a variant's `seed`) has its only home
here. Entries of a mapping named by the user (sources, variants, evaluate.tasks,
evaluate.domain_tasks) take the dataclass default for a key they omit: per-entry values are
overrides, never a second default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

import yaml

from simcse_ops.errors import ConfigError  # the one definition; importers may take it from here

DATA_ROOT_ENV = "SIMCSE_DATA_ROOT"

# eval-domain: a domain evaluation set (pair classification or retrieval; never trained on).
Role = Literal["eval-sts", "eval-domain", "train-unsup", "train-sup", "domain", "bias"]
# Every evaluation role, by definition those starting with "eval-": dedup decontaminates the
# training sources against every source with one of them, so a new evaluation role is covered.
EVAL_ROLES: tuple[str, ...] = tuple(r for r in get_args(Role) if r.startswith("eval-"))

# variants.<V>.pooler: model.pool computes each (the one list of names).
Pooler = Literal["cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2"]
POOLERS: tuple[str, ...] = get_args(Pooler)




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


# variants.<V>.precision; what each resolves to on a device: hardware.resolve_precision
PrecisionRequest = Literal["auto", "fp32", "bf16"]
DomainMetric = Literal["ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "ap", "roc_auc", "spearman",
                       "pearson"]


@dataclass(frozen=True)
class DomainTaskConfig:
    """A domain evaluation task: an `eval-domain` source of kind `pairs` (pair classification),
    `sts` (graded similarity) or `retrieval` (queries, documents, judgments). Scored on `split`,
    selected on `dev_split`."""

    source: str
    metric: DomainMetric | None = None  # the task's headline metric; None: ndcg@10 / ap by kind
    split: str = "test"  # reported (and gated) split
    dev_split: str = "dev"  # model selection (best checkpoint, any hyper-parameter choice)
    tolerance: float | None = None  # selection guard (evaluate.selection); None: selection.tolerance


@dataclass(frozen=True)
class SelectionConfig:
    """params.yaml `evaluate.selection`: how a domain variant's best step is chosen on dev.

    With P the primary task's dev figure and, for every guard g (each other domain task's dev
    split and STS-B dev), g_0 the start model's figure and tol_g its tolerance, a step scores
        sel = P - penalty * sum_g max(0, g_0 - tol_g - g)
    and the step with the highest sel is exported: the best primary among the steps that lose at
    most tol_g on every guard, else the one that loses least (penalty makes a guard point worth
    `penalty` primary points)."""

    tolerance: float = 0.5  # points a guard may fall below the start model's before it costs
    penalty: float = 10.0


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
    selection: SelectionConfig = field(default_factory=SelectionConfig)


@dataclass(frozen=True)
class VariantConfig:
    # unsup / sup: SimCSE; pairs: InfoNCE on (anchor, positive) pairs; tsdae: denoising auto-encoder
    method: Literal["pretrained", "unsup", "sup", "pairs", "tsdae"]
    base_model: str = "default"
    corpus: tuple[str, ...] = ()  # source names (after dedup) the variant trains on
    pooler: Pooler = "avg"
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
    # auto: bf16 autocast where the device multiplies bf16 natively (CUDA with bf16, a CPU with
    # AMX-BF16 or AVX512-BF16), else fp32; the rule is hardware.resolve_precision's.
    precision: PrecisionRequest = "auto"
    length_groups: int = 4  # forward passes per step over rows of similar length (less padding)
    # auto: FastDropout (simcse_ops.fast_dropout) on CPU, torch's on CUDA. Measured on unsup-wiki,
    # 3 seeds each: fast - native +0.01 STS [-0.42, +0.44], training 1.26x faster (README, Training > Results).
    dropout_impl: Literal["auto", "native", "fast"] = "auto"
    tsdae_deletion_ratio: float = 0.6  # tsdae: probability of deleting each input word (TSDAE paper: 0.6)
    # Weight interpolation (WiSE-FT, Wortsman et al. 2022): every evaluated and exported model is
    # (1 - w) * start + w * trained, parameter by parameter; 1.0: the trained weights as they are.
    interpolation: float = 1.0
    description: str = ""
    # Domain evaluation suite: names in evaluate.domain_tasks, scored next to the 7 STS tasks.
    # A variant with domain tasks is a *domain variant*: `primary_task` (default: the first)
    # selects its best checkpoint on the task's dev split and decides the registry gate.
    domain_tasks: tuple[str, ...] = ()
    primary_task: str | None = None

    @property
    def primary(self) -> str | None:
        return self.primary_task or (self.domain_tasks[0] if self.domain_tasks else None)


# --------------------------------------------------------------------------------------------
# dedup


MAX_NGRAM = 16  # dedup hashes n-grams with one multiplier per position (dedup._NGRAM_C)


@dataclass(frozen=True)
class DedupConfig:
    """params.yaml `dedup`: near-duplicate removal and decontamination (dedup.py)."""

    # Roles whose sources are cleaned and written to data/clean. Every sentence of every source
    # with an evaluation role (EVAL_ROLES, not configurable) is an evaluation sentence.
    roles: tuple[str, ...] = ("train-unsup", "train-sup", "domain")
    # More evaluation sets by source name (any role and kind), e.g. a domain STS set.
    extra_eval_sources: tuple[str, ...] = ()
    # Duplicates across training sources of the same kind (earlier source in params.yaml wins).
    across_sources: bool = True
    ngram: int = 2  # word n-gram shingles, 1..MAX_NGRAM
    threshold: float = 0.7
    num_perm: int = 128
    bands: int = 32
    # In a band bucket, each item is compared with the bucket's first item and its `bucket_window`
    # predecessors, which bounds the pairs a huge bucket can produce.
    bucket_window: int = 16
    # Candidates whose MinHash estimate of J is below threshold - margin are not verified.
    prefilter_margin: float = 0.15
    seed: int = 1234
    # Fail the stage when a source loses more than this share of its rows (a file ingested
    # twice, a corpus built from an evaluation set): never clean such data silently.
    max_removed_fraction: float = 0.3

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands


# --------------------------------------------------------------------------------------------
# validate (Great Expectations suites per data kind, expectations.py)


Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Rule:
    severity: Severity = "critical"
    enabled: bool = True


@dataclass(frozen=True)
class CountRule(Rule):
    min: int | None = 1
    max: int | None = None


@dataclass(frozen=True)
class LengthRule(Rule):
    min: int = 1
    max: int = 256
    mostly: float = 1.0  # share of rows that must lie in [min, max]


@dataclass(frozen=True)
class ShareRule(Rule):
    max_share: float = 0.0  # share of rows allowed to break the rule


@dataclass(frozen=True)
class SetRule(Rule):
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreRangeRule(Rule):
    default: tuple[float, ...] = (0.0, 5.0)
    per_source: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def range_for(self, source: str) -> tuple[float, float]:
        lo, hi = self.per_source.get(source, self.default)
        return float(lo), float(hi)


@dataclass(frozen=True)
class RowCountsRule(Rule):
    expected: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> split -> rows


@dataclass(frozen=True)
class CorpusSuiteConfig:
    not_null: Rule = Rule()
    not_empty: Rule = Rule()
    row_count: CountRule = CountRule()
    length_tokens: LengthRule = LengthRule(severity="warning", min=3, max=128, mostly=0.99)
    nonprintable: ShareRule = ShareRule(max_share=0.001)
    non_latin: ShareRule = ShareRule(severity="warning", max_share=0.02)
    unique: Rule = Rule()


@dataclass(frozen=True)
class NliSuiteConfig:
    not_null: Rule = Rule()
    not_empty: Rule = Rule()
    row_count: CountRule = CountRule()
    length_tokens: LengthRule = LengthRule(severity="warning", min=2, max=128, mostly=0.99)
    nonprintable: ShareRule = ShareRule(max_share=0.001)
    identical_pairs: ShareRule = ShareRule(severity="warning", max_share=0.01)
    unique: Rule = Rule()


@dataclass(frozen=True)
class TextPairsSuiteConfig:
    """Unlabelled positive pairs (anchor, positive): the NLI checks without a negative."""

    not_null: Rule = Rule()
    not_empty: Rule = Rule()
    row_count: CountRule = CountRule()
    # a positive may be a whole abstract: the upper bound is loose
    length_tokens: LengthRule = LengthRule(severity="warning", min=2, max=512, mostly=0.99)
    nonprintable: ShareRule = ShareRule(max_share=0.001)
    identical_pairs: ShareRule = ShareRule(severity="warning", max_share=0.01)  # anchor == positive
    unique: Rule = Rule()


@dataclass(frozen=True)
class PairsSuiteConfig:
    """Labelled evaluation pairs (sentence1, sentence2, label)."""

    not_null: Rule = Rule()
    not_empty: Rule = Rule()
    labels: SetRule = SetRule(values=("0", "1"))
    nonprintable: ShareRule = ShareRule(severity="warning", max_share=0.001)


@dataclass(frozen=True)
class StsSuiteConfig:
    not_null: Rule = Rule()
    not_empty: Rule = Rule()
    splits: SetRule = SetRule(values=("train", "dev", "test", "trial"))
    score_range: ScoreRangeRule = ScoreRangeRule()
    row_counts: RowCountsRule = RowCountsRule()
    nonprintable: ShareRule = ShareRule(severity="warning", max_share=0.001)
    identical_pairs: ShareRule = ShareRule(severity="warning", max_share=0.05)


@dataclass(frozen=True)
class ValidateConfig:
    clean_roles: tuple[str, ...] = ("train-unsup", "train-sup", "domain")  # read from data/clean
    eval_roles: tuple[str, ...] = ("eval-sts",)  # read from data/ingested
    result_format: Literal["BOOLEAN_ONLY", "BASIC", "SUMMARY", "COMPLETE"] = "SUMMARY"
    corpus: CorpusSuiteConfig = CorpusSuiteConfig()
    nli: NliSuiteConfig = NliSuiteConfig()
    sts: StsSuiteConfig = StsSuiteConfig()
    text_pairs: TextPairsSuiteConfig = TextPairsSuiteConfig()
    pairs: PairsSuiteConfig = PairsSuiteConfig()


# --------------------------------------------------------------------------------------------
# bias (SEAT, bias.py) and register (the promotion gate, gate.py)


@dataclass(frozen=True)
class BiasGateConfig:
    """How much worse than the champion a challenger may be on the bias summary.

    `null` disables a criterion. Both are absolute differences, challenger minus champion.
    """

    max_mean_abs_effect_size_increase: float | None = 0.05
    max_n_significant_increase: int | None = 1


@dataclass(frozen=True)
class BiasConfig:
    source: str = "seat"  # the ingested source (data/ingested/<source>.parquet) with SEAT tests
    tests: tuple[str, ...] = ()  # test names (file stems); empty = every test in the source
    n_samples: int = 100_000  # exact test when C(|X|+|Y|, |X|) <= n_samples, else this many partitions
    seed: int = 0
    alpha: float = 0.01  # family-wise error rate (Holm-Bonferroni over the tests of one run)
    batch_size: int = 128
    max_seq_length: int | None = None  # None: the model's own maximum
    device: str = "auto"
    gate: BiasGateConfig = field(default_factory=BiasGateConfig)


@dataclass(frozen=True)
class DomainGateConfig:
    """params.yaml `register.domain`: the gate of a domain variant (points of its primary metric)."""

    alpha: float = 0.05  # one-sided significance level of the paired bootstrap tests
    margin: float = 0.5  # never significantly worse than this below the champion (primary task) or
    #                      a reference (every other domain task)
    first_margin: float = 0.0  # must beat each reference on the primary task by significantly more
    general_max_drop: float = 0.5  # forgetting guard: the 7-task STS avg may fall at most this below
    #                                the best general reference's
    # The models a domain variant must beat, scored on its domain tasks in its evaluate stage.
    # None: the base variant and every general variant (trained, no domain tasks).
    references: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RegisterConfig:
    """params.yaml `register`: model naming and the promotion gate (Spearman x100 points)."""

    model_prefix: str = "simcse-"
    epsilon: float = 0.5  # the average may fall below the champion's by at most this
    delta: float = 1.0  # no single STS task may fall below the champion's by more than this
    base_variant: str = "base"  # the reference a first version must beat
    first_margin: float = 0.0  # a first version must exceed base avg by more than this
    bias_gate: bool = True  # apply the bias criterion (gate.gate_bias, thresholds `bias.gate`)
    domain: DomainGateConfig = field(default_factory=DomainGateConfig)
    # When an input (code, params.yaml, dvc.yaml) differs from the last commit: `hold` registers
    # the version and moves `challenger` but never `champion`; `refuse` fails the stage.
    # (Inside `dvc exp run` nothing is registered either way: registration.register_variant.)
    uncommitted: Literal["hold", "refuse"] = "hold"


# --------------------------------------------------------------------------------------------
# mlflow (tracking.py) and flows (flows/)


@dataclass(frozen=True)
class MlflowConfig:
    """params.yaml `mlflow`: the embedded store and the experiment runs go to."""

    store: str = "mlflow/mlflow.db"  # SQLite backend, relative to params.yaml's folder
    artifacts: str = "mlflow/artifacts"  # artifact root of the embedded store
    experiment: str = "simcse"
    # Our own retry loop (exponential backoff) replaces MLflow's built-in HTTP retries so that a
    # dead server fails in seconds with a clear message instead of minutes of silent retrying.
    retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 16.0
    http_timeout_s: int = 30


@dataclass(frozen=True)
class FlowsConfig:
    """params.yaml `flows`: how the flows run DVC (schedules live in flows/prefect.yaml)."""

    retries: int = 2                  # a failed stage is retried this many times ...
    retry_delay_seconds: float = 10.0  # ... after 10 s, 20 s, 40 s, ... (exponential backoff)
    retry_jitter_factor: float = 0.2   # +-20 % random jitter on each delay
    stderr_tail_lines: int = 40        # lines of DVC's stderr quoted in a failure
    lock_timeout_seconds: float | None = None  # wait for another flow's workspace lock; null: forever
    mlflow_ui: str = "http://127.0.0.1:5000"   # where `mlflow server` shows runs (artifact links)


# --------------------------------------------------------------------------------------------
# serve (serving.py: the pyfunc's limits, pickled with each registered version)


@dataclass(frozen=True)
class ServeConfig:
    """params.yaml `serve`: what the served model accepts. Read at registration and stored in the
    pyfunc, so a version keeps the limits it was registered with."""

    # the encoder runtime inside the pyfunc; "auto": of torch and the backends offered for the
    # version, the fastest on the serving CPU, timed when the model loads (serving.choose_backend)
    backend: Literal["torch", "onnx", "onnx-int8", "openvino", "openvino-int8", "auto"] = "auto"
    max_batch: int = 256    # sentences per request; more: HTTP 400
    max_chars: int = 2000   # characters per sentence; longer: HTTP 400 (rejected, never truncated)
    batch_size: int = 64    # sentences per forward pass (request param `batch_size` overrides it)
    # an exported backend is offered for a version iff its 7-task STS avg is at most this many
    # points (x100) below torch's and its smallest per-sentence cosine to torch on the parity
    # sample is at least min_cosine (evaluate@<variant> records both in sts.json `backends`)
    int8_max_drop: float = 0.3
    min_cosine: float = 0.99
    # export@<variant>: the OpenVINO int8 graph is calibrated on this many of the variant's own
    # training sentences, a sample drawn with this seed (backends.calibration_sample)
    calibration_sentences: int = 300
    calibration_seed: int = 0


# --------------------------------------------------------------------------------------------
# team (team.py: the shared stack a team runs on one machine)


@dataclass(frozen=True)
class TeamConfig:
    """params.yaml `team`: the stack `simcse-ops team up` starts (PostgreSQL, `mlflow server`,
    Prefect server, a process work pool and its workers, a DVC remote, a bare git repository the
    deployments clone). Every server binds `host`; the database password is read from the
    environment variable `password_env` and never written to a file of the project."""

    home: str = ".team"            # state folder (database files, logs, pids), relative to params.yaml
    host: str = "127.0.0.1"
    postgres_port: int = 5433
    mlflow_port: int = 5000
    prefect_port: int = 4200
    user: str = "simcse"
    password_env: str = "SIMCSE_PG_PASSWORD"
    pool: str = "simcse-team"
    workers: int = 2               # worker processes; the pool runs this many flow runs at once
    dvc_remote: str | None = None  # null: <home>/dvc-remote (a local folder); or s3://..., ssh://...
    repository: str | None = None  # null: <home>/repo.git, a bare repository `team up` pushes HEAD to
    branch: str = "main"           # what the deployments clone


@dataclass(frozen=True)
class Params:
    data: DataConfig
    sources: dict[str, SourceConfig]
    ingest: IngestConfig
    evaluate: EvaluateConfig
    variants: dict[str, VariantConfig]
    dedup: DedupConfig = field(default_factory=DedupConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    team: TeamConfig = field(default_factory=TeamConfig)
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

    def domain_references(self, variant: str) -> list[str]:
        """The references a domain variant is judged against (register.domain.references, default
        the base variant and every general variant), itself excluded; [] for a general variant."""
        if variant not in self.domain_variants():
            return []
        refs = self.register.domain.references
        if refs is None:
            general = [n for n, v in self.variants.items()
                       if v.method != "pretrained" and n not in self.domain_variants()]
            refs = (self.register.base_variant, *general)
        return [r for r in dict.fromkeys(refs) if r != variant]

    def variant(self, name: str) -> VariantConfig:
        if name not in self.variants:
            known = ", ".join(sorted(self.variants))
            raise ConfigError(f"{self.path}: variants: no variant {name!r}; known: {known}")
        return self.variants[name]


# --------------------------------------------------------------------------------------------
# Strict builder


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
    """Build `Params` from an already-parsed mapping (used by tests and `load_params`).

    Every section is typed here, then checked across sections (`_check_*`): a typo anywhere in
    params.yaml fails in the first second of the first stage, naming the file and the dotted key.
    """
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    sections = {f.name for f in dataclasses.fields(Params)} - {"path"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level section(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(sections))}"
        )
    params = dataclasses.replace(_build(Params, raw, "", path), path=path)
    for check in (_check_evaluate, _check_variants, _check_dedup, _check_validate, _check_bias,
                  _check_register, _check_mlflow_flows, _check_serve, _check_team):
        check(params, raw)
    return params


def _fail(params: Params, key: str, msg: str) -> None:
    raise ConfigError(f"{params.path}: {key}: {msg}")


def _roles_known(params: Params, key: str, roles: Sequence[str]) -> None:
    allowed = get_args(Role)
    for i, r in enumerate(roles):
        if r not in allowed:
            _fail(params, f"{key}[{i}]", f"{r!r} is not a role; expected one of {', '.join(allowed)}")


def _check_evaluate(params: Params, raw: dict) -> None:
    for name, task in params.evaluate.tasks.items():
        if task.source not in params.sources:
            _fail(params, f"evaluate.tasks.{name}.source", f"no source {task.source!r} in sources")
    for name, task in params.evaluate.domain_tasks.items():
        src = params.sources.get(task.source)
        key = f"evaluate.domain_tasks.{name}.source"
        if src is None:
            _fail(params, key, f"no source {task.source!r} in sources")
        if src.role != "eval-domain":
            _fail(params, key, f"{task.source!r} has role {src.role!r}; expected eval-domain "
                               f"(an evaluation set is never trained on)")
    b = params.evaluate.bootstrap
    if b.n_resamples < 100 or not 0.5 < b.confidence < 1.0:
        _fail(params, "evaluate.bootstrap", f"expected n_resamples >= 100 and 0.5 < confidence < 1, "
                                            f"got {b.n_resamples} and {b.confidence}")


def _check_variants(params: Params, raw: dict) -> None:
    for vname, v in params.variants.items():
        key = f"variants.{vname}"
        for t in v.domain_tasks:
            if t not in params.evaluate.domain_tasks:
                _fail(params, f"{key}.domain_tasks", f"no task {t!r} in evaluate.domain_tasks "
                                                     f"(known: {', '.join(params.evaluate.domain_tasks)})")
        if v.primary_task is not None and v.primary_task not in v.domain_tasks:
            _fail(params, f"{key}.primary_task",
                  f"{v.primary_task!r} is not one of its domain_tasks {list(v.domain_tasks)}")
        for c in v.corpus:
            if c not in params.sources:
                _fail(params, f"{key}.corpus", f"no source {c!r} in sources")
        if not 0.0 < v.interpolation <= 1.0:
            _fail(params, f"{key}.interpolation",
                  f"expected a weight in (0, 1] (1: the trained weights), got {v.interpolation}")
        if v.length_groups < 1:
            _fail(params, f"{key}.length_groups",
                  f"expected an integer >= 1 (1 = one padded forward pass per step), got {v.length_groups}")


def _check_dedup(params: Params, raw: dict) -> None:
    d = params.dedup
    _roles_known(params, "dedup.roles", d.roles)
    for i, s in enumerate(d.extra_eval_sources):
        if s not in params.sources:
            _fail(params, f"dedup.extra_eval_sources[{i}]", f"no source {s!r} in sources")
    if not 1 <= d.ngram <= MAX_NGRAM:
        _fail(params, "dedup.ngram", f"expected 1..{MAX_NGRAM}, got {d.ngram}")
    if not 0.0 < d.threshold <= 1.0:
        _fail(params, "dedup.threshold", f"expected in (0, 1], got {d.threshold}")
    if d.bands < 1 or d.num_perm % d.bands:
        _fail(params, "dedup.bands", f"{d.bands} must divide dedup.num_perm ({d.num_perm})")
    if d.bucket_window < 1:
        _fail(params, "dedup.bucket_window", f"expected >= 1, got {d.bucket_window}")
    if not 0.0 <= d.max_removed_fraction <= 1.0:
        _fail(params, "dedup.max_removed_fraction", f"expected in [0, 1], got {d.max_removed_fraction}")


def _check_validate(params: Params, raw: dict) -> None:
    v = params.validate
    _roles_known(params, "validate.clean_roles", v.clean_roles)
    _roles_known(params, "validate.eval_roles", v.eval_roles)
    r = v.sts.score_range
    for where, rng in [("default", r.default), *((f"per_source.{k}", x) for k, x in r.per_source.items())]:
        if len(rng) != 2 or rng[0] > rng[1]:
            _fail(params, f"validate.sts.score_range.{where}", f"expected [min, max], got {list(rng)}")


def _check_bias(params: Params, raw: dict) -> None:
    b = params.bias
    if b.n_samples < 1:
        _fail(params, "bias.n_samples", f"{b.n_samples}; expected an integer >= 1")
    if not 0.0 < b.alpha < 1.0:
        _fail(params, "bias.alpha", f"{b.alpha}; expected a number in (0, 1)")
    if b.batch_size < 1:
        _fail(params, "bias.batch_size", f"{b.batch_size}; expected an integer >= 1")
    # The source is checked when the file configures bias (a reader-only params file need not).
    if "bias" in raw:
        src = params.sources.get(b.source)
        if src is None:
            _fail(params, "bias.source", f"no source {b.source!r} in sources")
        if src.format != "seat_json":
            _fail(params, "bias.source", f"{b.source!r} has format {src.format!r}; expected a seat_json source")
    g = b.gate
    if g.max_mean_abs_effect_size_increase is not None and g.max_mean_abs_effect_size_increase < 0:
        _fail(params, "bias.gate.max_mean_abs_effect_size_increase", "expected >= 0 or null")
    if g.max_n_significant_increase is not None and g.max_n_significant_increase < 0:
        _fail(params, "bias.gate.max_n_significant_increase", "expected >= 0 or null")


def _check_register(params: Params, raw: dict) -> None:
    r = params.register
    if r.epsilon < 0 or r.delta < 0:
        _fail(params, "register.epsilon/delta", f"expected numbers >= 0, got {r.epsilon} and {r.delta}")
    d = r.domain
    if not 0.0 < d.alpha < 0.5:
        _fail(params, "register.domain.alpha", f"expected 0 < alpha < 0.5, got {d.alpha}")
    if d.margin < 0 or d.general_max_drop < 0:
        _fail(params, "register.domain", f"expected margin >= 0 and general_max_drop >= 0, "
                                         f"got {d.margin} and {d.general_max_drop}")
    if "register" in raw and params.variants and r.base_variant not in params.variants:
        _fail(params, "register.base_variant", f"no variant {r.base_variant!r} in variants "
                                               f"(known: {', '.join(params.variants)})")
    for i, ref in enumerate(d.references or ()):
        if "register" in raw and params.variants and ref not in params.variants:
            _fail(params, f"register.domain.references[{i}]", f"no variant {ref!r} in variants "
                                                             f"(known: {', '.join(params.variants)})")


def _check_mlflow_flows(params: Params, raw: dict) -> None:
    m = params.mlflow
    if m.retries < 0 or m.backoff_s < 0 or m.backoff_max_s < m.backoff_s or m.http_timeout_s < 1:
        _fail(params, "mlflow", f"expected retries >= 0, 0 <= backoff_s <= backoff_max_s and "
                                f"http_timeout_s >= 1, got {m.retries}, {m.backoff_s}, {m.backoff_max_s}, "
                                f"{m.http_timeout_s}")
    f = params.flows
    if f.retries < 0 or f.retry_delay_seconds < 0 or not 0 <= f.retry_jitter_factor <= 1:
        _fail(params, "flows", f"expected retries >= 0, retry_delay_seconds >= 0 and "
                               f"0 <= retry_jitter_factor <= 1, got {f.retries}, {f.retry_delay_seconds}, "
                               f"{f.retry_jitter_factor}")
    if f.lock_timeout_seconds is not None and f.lock_timeout_seconds < 0:
        _fail(params, "flows.lock_timeout_seconds", "expected >= 0 or null")


def _check_serve(params: Params, raw: dict) -> None:
    s = params.serve
    for key in ("max_batch", "max_chars", "batch_size", "calibration_sentences"):
        value = getattr(s, key)
        if value < 1:
            _fail(params, f"serve.{key}", f"expected an integer >= 1, got {value}")
    if not 0 <= s.int8_max_drop < 100:
        _fail(params, "serve.int8_max_drop", f"expected a number of STS points x100 in [0, 100), "
                                             f"got {s.int8_max_drop}")
    if not 0 < s.min_cosine <= 1:
        _fail(params, "serve.min_cosine", f"expected a cosine in (0, 1], got {s.min_cosine}")


def _check_team(params: Params, raw: dict) -> None:
    t = params.team
    for key in ("postgres_port", "mlflow_port", "prefect_port"):
        port = getattr(t, key)
        if not 1 <= port <= 65535:
            _fail(params, f"team.{key}", f"expected a TCP port 1..65535, got {port}")
    ports = [t.postgres_port, t.mlflow_port, t.prefect_port]
    if len(set(ports)) != 3:
        _fail(params, "team", f"postgres_port, mlflow_port and prefect_port must differ, got {ports}")
    if t.workers < 1:
        _fail(params, "team.workers", f"expected an integer >= 1, got {t.workers}")
    if not t.password_env.isidentifier():
        _fail(params, "team.password_env", "expected the NAME of an environment variable (letters, digits, _), "
                                           "not the password: never put the password itself in params.yaml")
    if not t.user.isidentifier():
        _fail(params, "team.user", f"expected a PostgreSQL role name (letters, digits, _), got {t.user!r}")


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
