"""The registry: the promotion gate, registration (tags, card, aliases), promote/rollback with the
audit trail, and loading registered versions - against a real embedded MLflow store in tmp_path
with the tiny model exported as a sentence-transformers folder."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from simcse_ops import actions, registration, tracking
from simcse_ops.errors import RegistryError
from simcse_ops.gate import DomainScore, Scores
from simcse_ops.scores import backend_notes, load_scores, score_tags, scores_from_tags
from simcse_ops.uris import parse_models_uri
from tests.registry_support import (
    export_st, make_project, tracking_env, write_backends, write_domain, write_metrics,
)

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]


def scores(avg: float, bias_mean: float = 0.3, n_sig: int = 2, **task: float) -> Scores:
    sts = {t: task.get(t, avg) for t in TASKS}
    sts["avg"] = sum(sts.values()) / len(TASKS)
    return Scores(sts, {"mean_abs_effect_size": bias_mean, "n_significant": n_sig, "n_tests": 5})


# The gate itself is tested in tests/test_gate.py.


def test_scores_round_trip_through_tags():
    s = scores(77.0, sts12=70.0)
    s = dataclasses.replace(s, domain={"mqp": DomainScore("ap", 81.23456, (79.1, 83.2))})
    back = scores_from_tags(score_tags(s), TASKS)
    assert back.sts == pytest.approx(s.sts, abs=1e-4)
    assert back.bias == s.bias
    assert back.domain["mqp"].metric == "ap" and back.domain["mqp"].value == pytest.approx(81.2346)


def test_load_scores_names_the_missing_task(tmp_path):
    (tmp_path / "sts.json").write_text(json.dumps({"sts12": 1.0, "avg": 1.0}))
    with pytest.raises(ValueError, match="no score for sts13"):
        load_scores(tmp_path, TASKS)


def test_parse_models_uri():
    assert parse_models_uri("models:/simcse-x@champion") == ("simcse-x", None, "champion")
    assert parse_models_uri("models:/simcse-x/3") == ("simcse-x", "3", None)
    with pytest.raises(ValueError):
        parse_models_uri("models:/simcse-x")


# --------------------------------------------------------------------------------------------
# Registration in a real store


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """tmp project: params.yaml, a tiny sentence-transformers model, metrics for base."""
    root = tmp_path_factory.mktemp("registry-project")
    params_path = make_project(root)
    model = export_st(tiny_model_dir, root / "models" / "tiny")
    write_metrics(root / "metrics" / "base", TASKS, 75.0, mean_abs=0.30, n_significant=2)
    with tracking_env():
        from simcse_ops.config import load_params

        params = load_params(params_path)
        tracking.configure(root, params.mlflow)
        yield root, params_path, model


def _params(params_path: Path, prefix: str):
    from simcse_ops.config import load_params

    p = load_params(params_path)
    return dataclasses.replace(p, register=dataclasses.replace(p.register, model_prefix=prefix))


def _register(project, prefix, variant, metrics, tag, domain=None):
    root, params_path, model = project
    mdir = write_metrics(root / "metrics" / f"{prefix}{tag}", TASKS, **metrics)
    if domain is not None:  # (the variant's per-query values, the base encoder's)
        write_domain(mdir, variant, *domain)
    return registration.register_variant(variant, model, mdir, _params(params_path, prefix), root,
                                         base_metrics_dir=root / "metrics" / "base", log=lambda m: None)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.mark.slow
def test_stage_registers_a_first_version_with_tags_card_and_aliases(project, tiny_model_dir):
    from stages.register import main

    root, params_path, model = project
    mdir = write_metrics(root / "metrics" / "sup-nli", TASKS, {**{t: 80.0 for t in TASKS}, "sickr": 78.0},
                         mean_abs=0.31, n_significant=2)
    out = root / "metrics" / "sup-nli" / "registry.json"
    main(["--variant", "sup-nli", "--params", str(params_path), "--model", str(model), "--metrics", str(mdir),
          "--base-metrics", str(root / "metrics" / "base"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["name"] == "simcse-sup-nli" and result["version"] == 1
    assert result["decision"] == "promote" and result["champion"] == 1 and result["compared_to"] == "base"
    # the reference's STS row as the gate saw it (base here), for the run report
    assert result["reference_sts"]["backend"] == "torch" and result["reference_sts"]["sickr"] == 75.0
    assert set(result["reference_sts"]) == {"backend", *TASKS, "avg"}
    assert _client().get_run(result["run_id"]).info.experiment_id == result["experiment_id"]

    client = _client()
    mv = client.get_model_version("simcse-sup-nli", "1")
    tags = mv.tags
    for t in TASKS:
        assert f"sts.{t}" in tags
    assert float(tags["sts.sickr"]) == 78.0 and float(tags["sts.avg"]) == pytest.approx(result_avg(mdir), abs=1e-3)
    assert json.loads(tags["bias.summary"])["mean_abs_effect_size"] == 0.31
    assert tags["bias.n_significant"] == "2"
    assert tags["gate.decision"] == "promote" and json.loads(tags["gate.reasons"]) == result["reasons"]
    assert tags["registry.state"] == "complete" and tags["variant"] == "sup-nli"
    assert tags["model_sha256"] == tracking.model_hash(model) and "git.commit" in tags and "sys.python" in tags
    assert {a for a in client.get_registered_model("simcse-sup-nli").aliases} == {"challenger", "champion"}

    # the model card: a run artifact, the version description, and inside the model
    run = client.get_run(tags["run_id"])
    assert run.data.metrics["sts.sickr"] == 78.0 and run.data.metrics["bias.mean_abs_effect_size"] == 0.31
    card_dir = client.download_artifacts(run.info.run_id, "model_card", str(root / "dl"))
    card = Path(card_dir, "model_card.md").read_text()
    assert card == mv.description
    for needle in ("## Data", "## Hyper-parameters", "| sickr | 78.00 | 75.00 |", "| sent-weat1 |",
                   "## Intended use and limits", "Decision: **promote**", "`snli`"):
        assert needle in card, needle
    log = actions.audit_log(client, "simcse-sup-nli")
    assert [(e["alias"], e["to"], e["action"]) for e in log] == [("challenger", "1", "register"), ("champion", "1", "gate")]
    assert all(e["who"] and e["why"] for e in log)


def result_avg(mdir: Path) -> float:
    return json.loads((mdir / "sts.json").read_text())["avg"]


@pytest.mark.slow
def test_degraded_model_is_registered_but_never_promoted_and_people_move_the_champion(project):
    root, params_path, _ = project
    prefix = "deg-"
    good = _register(project, prefix, "unsup-wiki", {"scores": 78.0}, "good")
    assert good["promoted"] and good["version"] == 1
    # a collapsed model (e.g. trained with a corrupted temperature) scores far lower everywhere
    bad = _register(project, prefix, "unsup-wiki", {"scores": 40.0}, "bad")
    assert bad["version"] == 2 and not bad["promoted"] and bad["champion"] == 1
    assert any("fail: avg 40.00 vs champion v1 78.00" in r for r in bad["reasons"])

    client = _client()
    name = "deg-unsup-wiki"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    v2 = client.get_model_version(name, "2").tags
    assert v2["gate.decision"] == "reject" and v2["registry.state"] == "complete"

    params = _params(params_path, prefix)
    base_dir = root / "metrics" / "base"
    # the gate also stops a person, unless forced with a reason
    with pytest.raises(RegistryError, match="fails the gate against champion v1"):
        actions.promote(client, params, "unsup-wiki", base_metrics_dir=base_dir, log=lambda m: None)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        actions.promote(client, params, "unsup-wiki", base_metrics_dir=base_dir, force=True, log=lambda m: None)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # a better third version passes the gate when promoted by hand
    third = _register(project, prefix, "unsup-wiki", {"scores": 78.2, "mean_abs": 0.30}, "third")
    assert third["promoted"]  # registration promoted it already
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"

    entry = actions.promote(client, params, "unsup-wiki", base_metrics_dir=base_dir, version=2, force=True,
                            reason="incident 42: v3 mis-tokenises", log=lambda m: None)
    assert entry["action"] == "force" and entry["from"] == "3" and entry["to"] == "2"
    assert client.get_model_version(name, "2").tags["promoted.forced"] == "true"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    # rollback: back through the champions, with who/why recorded
    actions.rollback(client, params, "unsup-wiki", reason="v2 is the degraded one", log=lambda m: None)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
    actions.rollback(client, params, "unsup-wiki", log=lambda m: None)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        actions.rollback(client, params, "unsup-wiki", log=lambda m: None)
    log = actions.audit_log(client, name)
    champion_moves = [(e["from"], e["to"], e["action"]) for e in log if e["alias"] == "champion"]
    assert champion_moves == [(None, "1", "gate"), ("1", "3", "gate"), ("3", "2", "force"),
                              ("2", "3", "rollback"), ("3", "1", "rollback")]
    assert [e["why"] for e in log if e["action"] == "force"] == ["incident 42: v3 mis-tokenises"]
    assert json.loads(client.get_model_version(name, "2").tags["rolled_back"])["why"] == "v2 is the degraded one"


@pytest.mark.slow
def test_cli_promote_and_rollback(project, capsys, monkeypatch):
    from simcse_ops.cli import main as cli

    root, params_path, _ = project
    # the CLI reads the project's params: use the default prefix with a variant of its own
    # biomed is a domain variant: judged on its primary task (per-query nDCG@10 values here)
    base = np.random.default_rng(0).uniform(0.4, 0.9, size=200)
    first = _register(project, "simcse-", "biomed", {"scores": 75.0}, "bio1", domain=(base - 0.03, base))
    assert not first["promoted"] and first["champion"] is None
    assert first["reasons"][0].startswith("fail: domain: pubmedqa_conclusion ndcg@10")
    monkeypatch.setenv("SIMCSE_OPS_USER", "alice")
    assert cli(["promote", "biomed", "--params", str(params_path),
                "--base-metrics", str(root / "metrics" / "base")]) == 1
    assert "fails the gate against base" in capsys.readouterr().err
    # without --base-metrics: the folder the register stage gets, read from the project's dvc.yaml
    shutil.copy(Path(__file__).resolve().parents[1] / "dvc.yaml", root / "dvc.yaml")
    assert cli(["promote", "biomed", "--params", str(params_path)]) == 1
    assert "fails the gate against base" in capsys.readouterr().err
    assert cli(["promote", "biomed", "--params", str(params_path), "--force", "--reason", "domain beats base on PubMed STS"]) == 0
    client = _client()
    assert str(client.get_model_version_by_alias("simcse-biomed", "champion").version) == "1"
    # the champion's per-query results come back from its run's artifacts for the paired test
    second = _register(project, "simcse-", "biomed", {"scores": 74.8}, "bio2", domain=(base + 0.02, base))
    assert second["promoted"] and second["version"] == 2, second["reasons"]
    assert second["reasons"][0].startswith("ok: domain: pubmedqa_conclusion ndcg@10")
    assert "vs base" in second["reasons"][0]  # each reference first, then the champion
    assert "vs champion v1" in second["reasons"][1] and second["reasons"][1].startswith("ok: domain: pubmedqa")
    assert second["compared_to"] == "base and champion v1"
    assert second["domain"]["pubmedqa_conclusion"]["champion"] == pytest.approx((base - 0.03).mean() * 100, abs=1e-3)
    card = client.get_model_version("simcse-biomed", "2").description
    assert "## Domain tasks (95% bootstrap intervals, reported split: test, BIOSSES's visible half)" in card
    assert "| pubmedqa_conclusion (primary) | ndcg@10 | 200 |" in card
    assert cli(["rollback", "biomed", "--params", str(params_path), "--reason", "drift"]) == 0
    assert str(client.get_model_version_by_alias("simcse-biomed", "champion").version) == "1"
    assert cli(["history", "biomed", "--params", str(params_path)]) == 0
    out = capsys.readouterr().out
    assert "alice: domain beats base on PubMed STS" in out and "rollback alice: drift" in out.replace("  ", " ")


@pytest.mark.slow
def test_registered_version_resolves_to_the_same_encoder(project, monkeypatch, tmp_path):
    from simcse_ops.encoder import encode, load_sentence_transformer, resolve_model

    root, params_path, model = project
    monkeypatch.setenv("SIMCSE_OPS_CACHE", str(tmp_path / "cache"))
    _register(project, "load-", "sup-nli", {"scores": 79.0}, "load")
    folder = Path(resolve_model("models:/load-sup-nli@champion"))
    assert folder.is_dir() and str(folder).startswith(str(tmp_path / "cache"))
    assert Path(resolve_model("models:/load-sup-nli/1")) == folder  # cached, same version
    # the registered encoder is the model folder as trained: nothing of this run or machine added
    assert tracking.model_hash(folder) == tracking.model_hash(model)
    sents = ["A man is playing a guitar.", "Stocks fell sharply."]
    a = encode(load_sentence_transformer(folder, device="cpu"), sents)
    b = encode(load_sentence_transformer(model, device="cpu"), sents)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no alias"):
        resolve_model("models:/load-sup-nli@nope")


@pytest.mark.slow
def test_failed_registration_is_undone_and_the_champion_restored(project):
    """A crash right after the champion moved (store still reachable): the half-made version is
    deleted and `champion` goes back, with the repair in the audit trail."""
    prefix = "undo-"
    assert _register(project, prefix, "sup-nli", {"scores": 78.0}, "u1")["promoted"]

    def crash(step):
        if step == "champion":
            raise RuntimeError("simulated crash")

    root, params_path, model = project
    mdir = write_metrics(root / "metrics" / "undo-u2", TASKS, 79.0)
    with pytest.raises(RegistryError, match="version 2 was created .* it was deleted again"):
        registration.register_variant("sup-nli", model, mdir, _params(params_path, prefix), root,
                                      base_metrics_dir=root / "metrics" / "base", on_step=crash, log=lambda m: None)
    client = _client()
    name = "undo-sup-nli"
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")] == ["1"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    moves = [(e["from"], e["to"], e["action"]) for e in actions.audit_log(client, name) if e["alias"] == "champion"]
    assert moves == [(None, "1", "gate"), ("1", "2", "gate"), ("2", "1", "repair")]
    # the champion stack after the repair holds v1 only
    with pytest.raises(RegistryError, match="no earlier champion"):
        actions.rollback(client, _params(params_path, prefix), "sup-nli", log=lambda m: None)


# --------------------------------------------------------------------------------------------
# Serving backends: the gate sees the served backend's scores; the export travels with the version


def test_load_scores_reads_the_served_backends_row(tmp_path):
    write_backends(write_metrics(tmp_path, TASKS, 80.0), TASKS, onnx=79.9, int8=79.5, offered=False)
    torch, onnx = load_scores(tmp_path, TASKS), load_scores(tmp_path, TASKS, backend="onnx")
    assert torch.sts["avg"] == 80.0 and torch.backend == "torch"
    assert onnx.sts == {**{t: 79.9 for t in TASKS}, "avg": 79.9} and onnx.backend == "onnx"
    assert list(onnx.backends) == ["torch", "onnx", "onnx-int8"]
    write_metrics(tmp_path / "old", TASKS, 80.0)  # evaluated before the backends
    with pytest.raises(ValueError, match=r"no STS scores of backend 'onnx'.*serve.backend: torch"):
        load_scores(tmp_path / "old", TASKS, backend="onnx")


def test_backend_scores_round_trip_through_tags_and_fall_back_to_torch(tmp_path):
    write_backends(write_metrics(tmp_path, TASKS, 80.0), TASKS, onnx=79.9, int8=79.5, offered=False)
    tags = score_tags(load_scores(tmp_path, TASKS, backend="onnx"))
    assert tags["serve_backend"] == "onnx" and tags["sts.avg"] == "79.9000"
    assert (tags["sts_torch.avg"], tags["sts_onnx.avg"], tags["sts_onnx-int8.sickr"]) == ("80.0000", "79.9000", "79.5000")
    assert tags["parity_onnx-int8.min_cosine"] == "0.999990" and tags["offered_onnx-int8"] == "false"
    assert "offered_onnx" not in tags and "parity_torch.min_cosine" not in tags

    served = scores_from_tags(tags, TASKS)  # default: the backend the version serves
    assert served.backend == "onnx" and served.sts["avg"] == pytest.approx(79.9)
    int8 = scores_from_tags(tags, TASKS, "onnx-int8")
    assert int8.backend == "onnx-int8" and int8.sts["avg"] == pytest.approx(79.5)
    old = {k: v for k, v in score_tags(load_scores(tmp_path, TASKS)).items()
           if k.startswith("sts.")}  # a version from before the backends: torch's sts.* only
    fallback = scores_from_tags(old, TASKS, "onnx")
    assert fallback.backend == "torch" and fallback.sts["avg"] == pytest.approx(80.0)
    assert backend_notes(served, fallback, "champion v1") == [
        "note: champion v1 has no onnx STS scores (registered or evaluated before the serving backends "
        "were); compared with its torch scores"]
    assert backend_notes(served, served, "champion v1") == [] and backend_notes(served, None, "x") == []


@pytest.fixture(scope="module")
def exported(project):
    """exports/tiny: the export stage's ONNX graphs of the project's model."""
    from simcse_ops.backends import export_onnx

    root, _, model = project
    export_onnx(model, root / "exports" / "tiny")
    return root / "exports" / "tiny"


def _register_backend(project, exported, prefix, backend, tag, torch=80.0, onnx=79.9, int8=79.5, offered=True):
    root, params_path, model = project
    mdir = write_backends(write_metrics(root / "metrics" / f"{prefix}{tag}", TASKS, torch), TASKS, onnx, int8, offered)
    p = _params(params_path, prefix)
    p = dataclasses.replace(p, serve=dataclasses.replace(p.serve, backend=backend))
    return registration.register_variant("sup-nli", model, mdir, p, root, base_metrics_dir=root / "metrics" / "base",
                                         log=lambda m: None, export_dir=exported)


@pytest.mark.slow
def test_onnx_version_carries_its_export_and_serves_torchs_embeddings(project, exported):
    import mlflow.pyfunc

    from simcse_ops.backends import OnnxEncoder
    from simcse_ops.encoder import encode, load_sentence_transformer

    root, _, model = project
    result = _register_backend(project, exported, "onnx-", "onnx", "v1")
    assert result["serve_backend"] == "onnx" and result["promoted"]
    assert "avg 79.90 vs base 75.00" in " ".join(result["reasons"])  # the gate saw onnx's avg
    mv = _client().get_model_version("onnx-sup-nli", "1")
    tags = mv.tags
    assert tags["serve_backend"] == "onnx" and float(tags["sts.avg"]) == 79.9
    assert float(tags["sts_torch.avg"]) == 80.0 and float(tags["sts_onnx-int8.avg"]) == 79.5
    assert tags["offered_onnx-int8"] == "true"
    card = mv.description
    assert "## Serving backends" in card and "serves with **onnx**" in card and "the promotion gate use its scores" in card
    assert "| **onnx** | 79.90 | 1.0000 | yes |" in card and "| onnx-int8 | 79.50 | 1.0000 | yes |" in card

    loaded = mlflow.pyfunc.load_model("models:/onnx-sup-nli/1")
    artifacts = Path(loaded._model_impl.context.artifacts["onnx"])
    assert sorted(p.name for p in artifacts.iterdir()) == sorted(p.name for p in exported.iterdir())
    assert isinstance(loaded.unwrap_python_model()._model, OnnxEncoder)
    sents = ["A man is playing a guitar.", "Stocks fell sharply on Monday.", "ok"]
    served = np.asarray(loaded.predict(sents))
    direct = encode(load_sentence_transformer(model, device="cpu"), sents)
    cos = (served * direct).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(direct, axis=1)
    assert served.shape == direct.shape and cos.min() > 0.9999


@pytest.mark.slow
def test_int8_not_offered_is_refused_before_anything_is_registered(project, exported):
    with pytest.raises(RegistryError, match=r"onnx-int8 is not offered for this version: STS avg torch 80\.00 - "
                                            r"onnx-int8 79\.50 = 0\.50 is more than .*Offered: onnx; set params.yaml serve.backend"):
        _register_backend(project, exported, "int8-", "onnx-int8", "v1", offered=False)
    assert _client().search_model_versions("name = 'int8-sup-nli'") == []
    result = _register_backend(project, exported, "int8-", "onnx-int8", "v1", int8=79.8, offered=True)
    assert result["serve_backend"] == "onnx-int8" and result["version"] == 1


@pytest.mark.slow
def test_an_onnx_challenger_meets_a_torch_only_champion_on_torchs_scores(project, exported):
    """A champion registered before the backends has torch's scores only: the gate compares with
    them and says so."""
    assert _register(project, "mixed-", "sup-nli", {"scores": 78.0}, "m1")["promoted"]
    result = _register_backend(project, exported, "mixed-", "onnx", "m2", torch=79.0, onnx=78.9, int8=78.5)
    reasons = " ".join(result["reasons"])
    assert "avg 78.90 vs champion v1 78.00" in reasons
    assert "note: champion v1 has no onnx STS scores" in reasons and "compared with its torch scores" in reasons
    # a second onnx version is compared on the champion's onnx scores (v2 is champion now)
    result = _register_backend(project, exported, "mixed-", "onnx", "m3", torch=79.5, onnx=79.3, int8=78.5)
    assert "avg 79.30 vs champion v2 78.90" in " ".join(result["reasons"]) and "note:" not in " ".join(result["reasons"])


# --------------------------------------------------------------------------------------------
# Outside a committed state: experiments and uncommitted inputs


@pytest.mark.slow
def test_an_experiment_gates_and_tracks_but_registers_nothing(project, monkeypatch):
    _register(project, "exp-", "sup-nli", {"scores": 80.0}, "first")  # v1, the champion
    client = _client()
    before = ([int(v.version) for v in client.search_model_versions("name = 'exp-sup-nli'")],
              dict(client.get_registered_model("exp-sup-nli").aliases))
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    result = _register(project, "exp-", "sup-nli", {"scores": 81.0}, "exp")
    after = ([int(v.version) for v in client.search_model_versions("name = 'exp-sup-nli'")],
             dict(client.get_registered_model("exp-sup-nli").aliases))
    assert after == before  # no version, no alias moved
    assert result["registered"] is False and result["version"] is None
    assert result["decision"] == "experiment: not registered" and result["champion"] == 1
    assert result["gate"] == {"decision": "promote", "would_promote": True}
    assert result["experiment"] == {"name": "lr-sweep-1", "baseline_rev": "a" * 40}
    run = client.get_run(result["run_id"])
    assert run.data.tags["dvc.exp_name"] == "lr-sweep-1" and run.data.tags["dvc.exp_baseline_rev"] == "a" * 40
    assert run.data.tags["gate.decision"] == "promote" and run.data.tags["stage"] == "experiment-gate"
    assert run.data.metrics["sts.avg"] == pytest.approx(81.0)
    assert "model_sha256" not in run.data.tags  # the training run keeps that tag to itself
    # a model never registered before: the experiment does not create the registered model either
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-2")
    result = _register(project, "exp-new-", "sup-nli", {"scores": 81.0}, "exp2")
    assert result["champion"] is None and result["gate"]["would_promote"] is True
    assert not client.search_registered_models("name = 'exp-new-sup-nli'")


def _git_project(project, tmp_path: Path) -> Path:
    """A git checkout holding the project's params.yaml, committed, with a dvc.lock naming metrics/
    as a stage output."""
    import subprocess

    root, params_path, model = project
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy2(params_path, repo / "params.yaml")
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages:\n  evaluate@x:\n    outs:\n    - path: metrics/x/sts.json\n")
    write_metrics(repo / "metrics" / "x", TASKS, 80.0)
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"],
                 ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


def test_uncommitted_inputs_leave_out_what_the_pipeline_writes(project, tmp_path):
    repo = _git_project(project, tmp_path)
    assert tracking.uncommitted_inputs(repo) == []
    (repo / "dvc.lock").write_text((repo / "dvc.lock").read_text() + "# rerun\n")
    write_metrics(repo / "metrics" / "x", TASKS, 81.0)
    assert tracking.uncommitted_inputs(repo) == []  # dvc.lock and stage outputs: the pipeline's own
    assert tracking.git_info(repo)["git.dirty"] == "false"
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n# changed\n")
    assert tracking.uncommitted_inputs(repo) == ["params.yaml"]
    assert tracking.git_info(repo)["git.dirty"] == "true"


@pytest.mark.slow
def test_uncommitted_inputs_hold_the_champion_or_refuse(project, tmp_path):
    root, params_path, model = project
    repo = _git_project(project, tmp_path)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n# changed\n")
    params = _params(params_path, "dirty-")
    tracking.get_experiment_id(_client(), root, params.mlflow)  # artifacts under the store's root, not in cwd
    mdir = write_metrics(root / "metrics" / "dirty", TASKS, 80.0)
    result = registration.register_variant("sup-nli", model, mdir, params, repo,
                                           base_metrics_dir=root / "metrics" / "base", log=lambda m: None)
    assert result["registered"] is True and result["version"] == 1
    assert result["decision"] == "held" and result["promoted"] is False and result["champion"] is None
    assert result["reasons"][-1].startswith("held: 1 tracked file(s) (params.yaml) differ from the last commit")
    assert set(_client().get_registered_model("dirty-sup-nli").aliases) == {"challenger"}

    refuse = dataclasses.replace(params, register=dataclasses.replace(params.register, uncommitted="refuse"))
    with pytest.raises(RegistryError, match=r"params.yaml\) differ from the last commit and register.uncommitted is 'refuse'"):
        registration.register_variant("sup-nli", model, mdir, refuse, repo,
                                      base_metrics_dir=root / "metrics" / "base", log=lambda m: None)
    assert [int(v.version) for v in _client().search_model_versions("name = 'dirty-sup-nli'")] == [1]


def test_auto_gates_on_the_offered_backend_with_the_lowest_sts(tmp_path):
    """serve.backend auto may serve any offered backend: the gate sees the worst of them."""
    write_backends(write_metrics(tmp_path, TASKS, 80.0), TASKS, onnx=79.9, int8=79.5, offered=True, openvino=79.8)
    assert load_scores(tmp_path, TASKS, backend="auto").backend == "onnx-int8"
    write_backends(write_metrics(tmp_path / "b", TASKS, 80.0), TASKS, onnx=80.1, int8=79.5, offered=False,
                   openvino=80.2)
    auto = load_scores(tmp_path / "b", TASKS, backend="auto")
    assert auto.backend == "torch" and auto.sts["avg"] == 80.0  # int8 not offered; the others above torch


def test_a_backend_the_base_variant_did_not_export_falls_back_to_torch(tmp_path):
    """base has no OpenVINO int8 graph (no training sentences): its sts.json row holds only the
    verdict, and a variant served with openvino-int8 is compared with base's torch scores."""
    from simcse_ops.scores import base_scores, has_sts

    base = write_backends(write_metrics(tmp_path / "base", TASKS, 78.0), TASKS, onnx=78.0, int8=77.9, offered=True)
    raw = json.loads((base / "sts.json").read_text())
    raw["backends"]["openvino-int8"] = {"offered": False, "reason": "not exported"}
    (base / "sts.json").write_text(json.dumps(raw))
    assert not has_sts(raw, "openvino-int8") and has_sts(raw, "onnx-int8") and has_sts(raw, "torch")
    b = base_scores(base, TASKS, backend="openvino-int8")
    assert b.backend == "torch" and b.sts["avg"] == 78.0
