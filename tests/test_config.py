"""params.yaml is loaded strictly: typos and wrong types fail with the file and the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from simcse_ops.config import ConfigError, load_params, parse_params


@pytest.fixture()
def raw(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_project_params_load(params):
    assert params.variant("sup-nli").method == "sup"
    assert set(params.evaluate.tasks) == {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"}
    assert params.evaluate.max_seq_length is None  # evaluate at the model's full length


def test_unknown_key_names_file_and_key(raw, tmp_path):
    bad = copy.deepcopy(raw)
    bad["variants"]["sup-nli"]["learning_rate"] = 1e-5
    with pytest.raises(ConfigError, match=r"p.yaml: variants.sup-nli: unknown key\(s\) 'learning_rate'"):
        parse_params(bad, tmp_path / "p.yaml")


def test_wrong_type_and_literal(raw, tmp_path):
    bad = copy.deepcopy(raw)
    bad["variants"]["sup-nli"]["batch_size"] = "big"
    with pytest.raises(ConfigError, match=r"variants.sup-nli.batch_size: expected an integer, got 'big'"):
        parse_params(bad, tmp_path / "p.yaml")
    bad = copy.deepcopy(raw)
    bad["variants"]["sup-nli"]["pooler"] = "max"
    with pytest.raises(ConfigError, match=r"variants.sup-nli.pooler: 'max' is not one of"):
        parse_params(bad, tmp_path / "p.yaml")


def test_yaml_exponent_without_dot_is_a_number(raw, tmp_path):
    ok = copy.deepcopy(raw)
    ok["variants"]["sup-nli"]["lr"] = "3e-5"  # what YAML 1.1 gives for `lr: 3e-5`
    assert parse_params(ok, tmp_path / "p.yaml").variant("sup-nli").lr == pytest.approx(3e-5)


def test_cross_references_are_checked(raw, tmp_path):
    bad = copy.deepcopy(raw)
    bad["evaluate"]["tasks"]["sts12"]["source"] = "sts2012"
    with pytest.raises(ConfigError, match=r"evaluate.tasks.sts12.source: no source 'sts2012'"):
        parse_params(bad, tmp_path / "p.yaml")
    bad = copy.deepcopy(raw)
    bad["variants"]["sup-nli"]["corpus"] = ["mnli"]
    with pytest.raises(ConfigError, match=r"variants.sup-nli.corpus: no source 'mnli'"):
        parse_params(bad, tmp_path / "p.yaml")
    bad = copy.deepcopy(raw)
    bad["variants"]["sup-nli"]["length_groups"] = 0
    with pytest.raises(ConfigError, match=r"variants.sup-nli.length_groups: expected an integer >= 1"):
        parse_params(bad, tmp_path / "p.yaml")


def test_unknown_variant_lists_known(params):
    with pytest.raises(ConfigError, match=r"no variant 'nope'; known: .*sup-nli"):
        params.variant("nope")


def test_unknown_top_level_section(raw, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown top-level section\(s\) 'trian'"):
        parse_params({**raw, "trian": {}}, tmp_path / "p.yaml")


def test_data_root_relative_to_params_and_env_override(raw, tmp_path, monkeypatch):
    monkeypatch.delenv("SIMCSE_DATA_ROOT", raising=False)
    p = tmp_path / "proj" / "params.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(raw))
    assert load_params(p).data_root == (tmp_path / "shared" / "data").resolve()
    monkeypatch.setenv("SIMCSE_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert load_params(p).data_root == (tmp_path / "elsewhere").resolve()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")


# --------------------------------------------------------------------------------------------
# Every section is typed at load: a typo anywhere fails before any stage does work.


@pytest.mark.parametrize(
    "section, path, value, message",
    [
        ("register", ["epsilom"], 0.5, r"register: unknown key\(s\) 'epsilom'"),
        ("register", ["domain", "alfa"], 0.05, r"register\.domain: unknown key\(s\) 'alfa'"),
        ("register", ["domain", "alpha"], 0.7, r"register\.domain\.alpha: expected 0 < alpha < 0\.5"),
        ("register", ["base_variant"], "bsae", r"register\.base_variant: no variant 'bsae'"),
        ("register", ["bias_gate"], "yes", r"register\.bias_gate: expected true or false"),
        ("bias", ["gate", "max_n_significant"], 1, r"bias\.gate: unknown key\(s\) 'max_n_significant'"),
        ("bias", ["alpha"], 2.0, r"bias\.alpha: 2\.0; expected a number in \(0, 1\)"),
        ("dedup", ["thresold"], 0.7, r"dedup: unknown key\(s\) 'thresold'"),
        ("dedup", ["bands"], 30, r"dedup\.bands: 30 must divide dedup\.num_perm"),
        ("validate", ["corpus", "unique", "severity"], "fatal", r"validate\.corpus\.unique\.severity: 'fatal'"),
        ("validate", ["eval_roles"], ["eval-stss"], r"validate\.eval_roles\[0\]: 'eval-stss' is not a role"),
        ("flows", ["retires"], 2, r"flows: unknown key\(s\) 'retires'"),
        ("flows", ["retries"], "two", r"flows\.retries: expected an integer, got 'two'"),
        ("mlflow", ["experimnt"], "x", r"mlflow: unknown key\(s\) 'experimnt'"),
        ("mlflow", ["retries"], -1, r"mlflow: expected retries >= 0"),
        ("evaluate", ["bootstrap", "n_resample"], 10, r"evaluate\.bootstrap: unknown key\(s\) 'n_resample'"),
        ("ingest", ["max_bad"], 0.1, r"ingest: unknown key\(s\) 'max_bad'"),
        ("serve", ["max_batchs"], 10, r"serve: unknown key\(s\) 'max_batchs'"),
        ("serve", ["backend"], "tensorrt", r"serve\.backend: 'tensorrt' is not one of 'torch', 'onnx', 'onnx-int8'"),
        ("serve", ["max_batch"], "many", r"serve\.max_batch: expected an integer, got 'many'"),
        ("serve", ["max_chars"], 2.5, r"serve\.max_chars: expected an integer, got 2\.5"),
        ("serve", ["max_batch"], 0, r"serve\.max_batch: expected an integer >= 1, got 0"),
        ("serve", ["max_chars"], -1, r"serve\.max_chars: expected an integer >= 1, got -1"),
        ("serve", ["batch_size"], 0, r"serve\.batch_size: expected an integer >= 1, got 0"),
        ("serve", ["int8_max_drop"], "small", r"serve\.int8_max_drop: expected a number, got 'small'"),
        ("serve", ["int8_max_drop"], -0.1, r"serve\.int8_max_drop: expected a number of STS points x100 in \[0, 100\), got -0\.1"),
    ],
)
def test_a_typo_in_any_section_fails_at_load(raw, tmp_path, section, path, value, message):
    import copy

    bad = copy.deepcopy(raw)
    node = bad.setdefault(section, {})
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=r"p\.yaml: " + message):
        parse_params(bad, tmp_path / "p.yaml")


def test_every_section_is_typed(params):
    """No section stays a plain mapping until its stage runs."""
    import dataclasses

    for f in dataclasses.fields(params):
        if f.name not in ("path",):
            value = getattr(params, f.name)
            inner = next(iter(value.values())) if isinstance(value, dict) and value else value
            assert dataclasses.is_dataclass(inner), f"params.{f.name} is not typed: {type(inner)}"


def test_serve_defaults_and_project_values(raw, params, tmp_path):
    from simcse_ops.config import ServeConfig

    assert params.serve == ServeConfig(backend="auto", max_batch=256, max_chars=2000, batch_size=64,
                                       int8_max_drop=0.3, min_cosine=0.99, calibration_sentences=300,
                                       calibration_seed=0)
    without = {k: v for k, v in raw.items() if k != "serve"}
    assert parse_params(without, tmp_path / "p.yaml").serve == ServeConfig()
    onnx = {**raw, "serve": {"backend": "onnx-int8", "max_batch": 8, "int8_max_drop": 1}}
    assert parse_params(onnx, tmp_path / "p.yaml").serve == ServeConfig(backend="onnx-int8", max_batch=8,
                                                                        int8_max_drop=1.0)
    for bad, match in [({"backend": "tensorrt"}, "serve.backend"), ({"min_cosine": 1.5}, "serve.min_cosine"),
                       ({"calibration_sentences": 0}, "serve.calibration_sentences")]:
        with pytest.raises(ConfigError, match=match):
            parse_params({**raw, "serve": bad}, tmp_path / "p.yaml")


def test_domain_references_default_to_base_and_every_general_variant(raw, params, tmp_path):
    assert params.domain_references("biomed") == ["base", "unsup-wiki", "sup-nli"]
    assert params.domain_references("unsup-wiki") == [] and params.domain_references("base") == []
    own = copy.deepcopy(raw)
    own["register"]["domain"]["references"] = ["unsup-wiki", "base", "biomed"]
    assert parse_params(own, tmp_path / "p.yaml").domain_references("biomed") == ["unsup-wiki", "base"]
    own["register"]["domain"]["references"] = ["base", "unsup-wikii"]
    with pytest.raises(ConfigError, match=r"register.domain.references\[1\]: no variant 'unsup-wikii'"):
        parse_params(own, tmp_path / "p.yaml")


def _default_disagreements(value, raw: dict, default=None, where: str = "") -> list[str]:
    """`key: dataclass default != params.yaml value` for every key `raw` (params.yaml) states at
    any depth that also has a dataclass default. `value` is the loaded object; `default` the
    default object of its place (None: the fields' own defaults). A mapping of named entries
    (sources, variants, tasks, per-source ranges) is compared entry by entry where the default
    has the entry too (a variant's keys override VariantConfig's defaults by design)."""
    import dataclasses

    out = []
    for f in dataclasses.fields(value):
        if f.name not in raw:
            continue
        key = f"{where}.{f.name}" if where else f.name
        if default is not None:
            d = getattr(default, f.name)
        elif f.default is not dataclasses.MISSING:
            d = f.default
        elif f.default_factory is not dataclasses.MISSING:
            d = f.default_factory()
        else:
            d = None  # required: params.yaml is its only home
        v = getattr(value, f.name)
        if dataclasses.is_dataclass(v):
            out += _default_disagreements(v, raw[f.name], d, key)
        elif isinstance(v, dict):
            for name in sorted(set(d or {}) & set(v)):
                if dataclasses.is_dataclass(v[name]):
                    out += _default_disagreements(v[name], raw[f.name][name], d[name], f"{key}.{name}")
                elif d[name] != v[name]:
                    out.append(f"{key}.{name}: default {d[name]!r} != params.yaml {v[name]!r}")
        elif d is not None and d != v:
            out.append(f"{key}: default {d!r} != params.yaml {v!r}")
    return out


def test_every_dataclass_default_agrees_with_params_yaml(raw, params):
    """One home per value: where params.yaml and a config dataclass both state a key's value,
    they agree (a changed default would otherwise change behaviour only where params.yaml is
    not read, e.g. a test's partial params or a section a user deletes)."""
    assert _default_disagreements(params, raw) == []

    changed = copy.deepcopy(raw)  # the walk sees nested sections and rules
    changed["bias"]["gate"]["max_n_significant_increase"] = 3
    changed["validate"]["corpus"]["length_tokens"]["max"] = 64
    assert _default_disagreements(parse_params(changed), changed) == [
        "validate.corpus.length_tokens.max: default 128 != params.yaml 64",
        "bias.gate.max_n_significant_increase: default 1 != params.yaml 3",
    ]

