"""The evaluate stage on the real data, checked against an independent implementation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from simcse_ops.config import StsTaskConfig
from simcse_ops.evaluation import evaluate_model, load_task, split_wall_times
from simcse_ops.readers import read_source


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory, params, data_root):
    """The STS-B and SICK sources ingested from the real files into a temporary folder."""
    out = tmp_path_factory.mktemp("ingested")
    for name in ("stsb", "sick"):
        pq.write_table(read_source(name, params.sources[name], data_root), out / f"{name}.parquet")
    return out


def test_load_task_filters_split(params, eval_data):
    assert len(load_task(eval_data, StsTaskConfig("stsb", "test"), "stsb", params.path)) == 1379
    assert len(load_task(eval_data, StsTaskConfig("sick", "test"), "sickr", params.path)) == 4927
    with pytest.raises(ValueError, match=r"evaluate.tasks.x.split: 'validation' not in"):
        load_task(eval_data, StsTaskConfig("stsb", "validation"), "x", params.path)


def test_missing_ingested_file_says_what_to_run(params, tmp_path):
    with pytest.raises(FileNotFoundError, match="run the ingest stage first"):
        load_task(tmp_path, StsTaskConfig("stsb", "test"), "stsb", params.path)


@pytest.mark.slow
def test_parity_with_sentence_transformers_evaluator(params, eval_data):
    """Our STS-B test and SICK-R test figures for the default encoder agree within 0.01 with
    sentence-transformers' EmbeddingSimilarityEvaluator (cosine Spearman)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from simcse_ops.encoder import default_model_path

    tasks = {"stsb": StsTaskConfig("stsb", "test"), "sickr": StsTaskConfig("sick", "test")}
    p = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, tasks=tasks))
    ours = evaluate_model(p, "default", eval_data)

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    for name, task in tasks.items():
        df = load_task(eval_data, task, name, params.path)
        ev = EmbeddingSimilarityEvaluator(
            df["sentence1"].tolist(),
            df["sentence2"].tolist(),
            df["score"].tolist(),
            main_similarity="cosine",
            name=name,
            write_csv=False,
            batch_size=64,
        )
        theirs = ev(model)[f"{name}_spearman_cosine"] * 100
        assert ours["details"][name]["spearman"] == pytest.approx(theirs, abs=0.01), (name, theirs)
    # and the published figure for this encoder is in the right place (SBERT reports ~82 on STS-B)
    assert 75 < ours["stsb"] < 90
    json.dumps(ours)  # the metrics are JSON-serialisable


# --------------------------------------------------------------------------------------------
# Domain tasks


@pytest.fixture(scope="module")
def domain_data(tmp_path_factory, params, data_root):
    """The domain evaluation sets (MQP, PubMedQA question -> conclusion) ingested from the real files."""
    out = tmp_path_factory.mktemp("domain")
    for name in ("mqp", "pubmedqa_conclusion", "stsb", "biosses"):
        pq.write_table(read_source(name, params.sources[name], data_root), out / f"{name}.parquet")
    return out


def domain_params(params, tasks=("pubmedqa_conclusion", "mqp")):
    v = dataclasses.replace(params.variants["biomed"], domain_tasks=tuple(tasks), primary_task=tasks[0])
    return dataclasses.replace(params, variants={**params.variants, "biomed": v})


def test_domain_tasks_load_their_splits(params, domain_data):
    from simcse_ops.config import ConfigError
    from simcse_ops.evaluation import load_domain_task

    test, dev = (load_domain_task(params, domain_data, "mqp", s) for s in ("test", "dev"))
    assert (len(test.pairs), len(dev.pairs)) == (1568, 1480)
    assert not set(test.pairs["group"]) & set(dev.pairs["group"])  # split by original question
    r = load_domain_task(params, domain_data, "pubmedqa_conclusion", "test")
    assert (len(r.queries), len(r.docs), len(r.qrels)) == (500, 1000, 500)
    assert len(load_domain_task(params, domain_data, "pubmedqa_conclusion", "dev").queries) == 241
    with pytest.raises(ConfigError, match=r"evaluate.domain_tasks.mqp: split 'validation' has 0 pairs"):
        load_domain_task(params, domain_data, "mqp", "validation")


@pytest.mark.slow
def test_evaluate_domain_scores_the_variant_base_and_bm25(params, domain_data, tiny_model_dir):
    from simcse_ops.evaluation import evaluate_domain

    p = domain_params(params)
    summary, items = evaluate_domain(p, "biomed", {"biomed": tiny_model_dir, "base": tiny_model_dir}, domain_data)
    assert summary["models"] == ["biomed", "base", "bm25"] and summary["primary"] == "pubmedqa_conclusion"
    ret, mqp = summary["tasks"]["pubmedqa_conclusion"], summary["tasks"]["mqp"]
    assert (ret["metric"], ret["n"], mqp["metric"], mqp["n"]) == ("ndcg@10", 500, "ap", 1568)
    assert set(ret["results"]) == {"biomed", "base", "bm25"} and set(mqp["results"]) == {"biomed", "base"}
    # BM25 is independent of the encoder: the measurement (83.8) on the same 500 questions
    assert ret["results"]["bm25"]["metrics"]["ndcg@10"] == pytest.approx(83.8, abs=0.05)
    for t in (ret, mqp):
        r = t["results"]["biomed"]
        lo, hi = r["ci"][t["metric"]]
        assert lo <= r["metrics"][t["metric"]] <= hi
        # the same encoder twice: a paired difference of exactly 0
        assert t["vs_base"]["biomed"]["diff"] == 0.0 and t["vs_base"]["biomed"]["ci"] == [0.0, 0.0]
    assert len(items["tasks"]["pubmedqa_conclusion"]["biomed"]["ndcg@10"]) == 500
    assert len(items["tasks"]["mqp"]["base"]["score"]) == 1568


@pytest.mark.slow
def test_default_encoder_matches_the_independent_measurement(params, domain_data):
    """all-MiniLM-L6-v2 on question -> conclusion: 88.5 nDCG@10 as measured outside the pipeline."""
    from simcse_ops.evaluation import load_domain_task, rescore_domain_task

    r = rescore_domain_task(params, "pubmedqa_conclusion", "default", domain_data)
    assert r["metric"] == "ndcg@10" and r["value"] == pytest.approx(88.5, abs=0.05)
    assert len(load_domain_task(params, domain_data, "pubmedqa_conclusion", "test").queries) == len(r["items"]["id"])


def test_model_selection_uses_the_dev_splits_of_every_task(params, domain_data):
    from simcse_ops.evaluation import dev_scorer_for, load_domain_task

    p = domain_params(params, ("pubmedqa_conclusion", "mqp", "biosses"))
    assert dev_scorer_for(p, "biomed", domain_data).metric == "select_pubmedqa_conclusion_dev"
    assert dev_scorer_for(p, "unsup-wiki", domain_data).metric == "stsb_dev_spearman"
    seen = []

    def embed(texts):  # records what the scorer encodes: dev splits only, never a test one
        seen.extend(texts)
        rng = np.random.default_rng(len(seen))
        return rng.normal(size=(len(texts), 4)).astype(np.float32)

    scorer = dev_scorer_for(p, "biomed", domain_data)
    sel = scorer.score(embed)
    assert set(scorer.parts) == {"pubmedqa_conclusion", "mqp", "biosses", "stsb_dev_spearman"}
    assert sel == scorer.parts["pubmedqa_conclusion"]  # no reference yet (the start model): sel = P
    test_q = set(load_domain_task(p, domain_data, "pubmedqa_conclusion", "test").queries["text"])
    dev_q = set(load_domain_task(p, domain_data, "pubmedqa_conclusion", "dev").queries["text"])
    mqp_test = load_domain_task(p, domain_data, "mqp", "test").pairs
    assert dev_q <= set(seen) and not test_q & set(seen)
    assert not set(mqp_test["sentence1"]) & set(seen)
    # against a reference, the guards' shortfall beyond their tolerance costs `penalty` each
    scorer.reference.update({k: v + 2.0 for k, v in scorer.parts.items()})  # the start model was better
    parts = dict(scorer.parts)
    seen.clear()
    again = scorer.score(lambda t: np.random.default_rng(0).normal(size=(len(t), 4)).astype(np.float32))
    assert set(scorer.parts) == set(parts)
    tol = {"mqp": 0.5, "biosses": 1.0, "stsb_dev_spearman": 0.5}
    short = sum(max(0.0, scorer.reference[g] - tol[g] - scorer.parts[g]) for g in tol)
    assert again == pytest.approx(scorer.parts["pubmedqa_conclusion"] - 10.0 * short)


def test_selection_score_is_the_primary_among_steps_inside_the_tolerance():
    from simcse_ops.evaluation import selection_score

    ref = {"p": 90.0, "a": 80.0, "b": 50.0}
    tol = {"a": 0.5, "b": 1.0}
    inside = {"p": 92.0, "a": 79.6, "b": 49.1}  # both guards within their tolerance
    assert selection_score(inside, "p", ref, tol, 10.0) == pytest.approx(92.0)
    outside = {"p": 95.0, "a": 79.0, "b": 50.0}  # a falls 1.0: 0.5 beyond its tolerance
    assert selection_score(outside, "p", ref, tol, 10.0) == pytest.approx(95.0 - 5.0)
    assert selection_score(inside, "p", ref, tol, 10.0) > selection_score(outside, "p", ref, tol, 10.0)
    assert selection_score(outside, "p", {}, tol, 10.0) == 95.0  # no reference: the primary alone


@pytest.mark.slow
def test_references_are_scored_beside_the_variant(params, domain_data, tiny_model_dir):
    from simcse_ops.evaluation import evaluate_domain
    from simcse_ops.files import model_hash

    p = domain_params(params, ("mqp", "biosses"))
    models = {"biomed": tiny_model_dir, "base": tiny_model_dir, "unsup-wiki": tiny_model_dir}
    summary, items = evaluate_domain(p, "biomed", models, domain_data)
    assert summary["references"] == ["base", "unsup-wiki"]
    assert summary["reference_models"] == {"base": model_hash(tiny_model_dir), "unsup-wiki": model_hash(tiny_model_dir)}
    bio = summary["tasks"]["biosses"]
    assert (bio["kind"], bio["metric"], bio["n"], bio["split"]) == ("sts", "spearman", 50, "dev")
    for t in summary["tasks"].values():
        assert set(t["vs_references"]) == {"base", "unsup-wiki"}
        assert t["vs_references"]["unsup-wiki"]["diff"] == 0.0  # the same encoder
    assert len(items["tasks"]["biosses"]["unsup-wiki"]["gold"]) == 50


def test_split_wall_times_moves_every_time_out_and_leaves_its_inputs_alone():
    sts = {"stsb": 80.0, "avg": 80.0, "timing": {"encode_s": 1.5, "total_s": 2.0},
           "backends": {"torch": {"avg": 80.0}, "onnx": {"avg": 79.9, "parity": {"min": 0.999}, "encode_s": 0.7}}}
    summary = {"variant": "biomed", "tasks": {"mqp": {"metric": "ap", "results": {
        "biomed": {"metrics": {"ap": 90.0}, "ci": {}, "timing": {"encode_s": 0.1, "total_s": 0.2}},
        "bm25": {"metrics": {"ap": 70.0}, "ci": {}, "timing": {"total_s": 0.05}}}}}}
    before = json.dumps([sts, summary], sort_keys=True)

    out_sts, out_summary, timing = split_wall_times(sts, summary)

    assert json.dumps([sts, summary], sort_keys=True) == before  # inputs untouched
    assert "timing" not in out_sts and "encode_s" not in out_sts["backends"]["onnx"]
    assert out_sts["backends"]["onnx"]["parity"] == {"min": 0.999}
    assert all("timing" not in r for r in out_summary["tasks"]["mqp"]["results"].values())
    assert timing == {"sts": {"encode_s": 1.5, "total_s": 2.0}, "backends": {"onnx": {"encode_s": 0.7}},
                      "domain": {"mqp": {"biomed": {"encode_s": 0.1, "total_s": 0.2}, "bm25": {"total_s": 0.05}}}}
    # a variant without domain tasks and a run without exports
    assert split_wall_times({"avg": 1.0, "timing": {}}, {"tasks": {}})[2] == {"sts": {}, "backends": {}, "domain": {}}
