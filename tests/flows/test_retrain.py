"""`flows.retrain`: domain discovery, the unknown-domain error, and a retrain picking up a new file."""

from __future__ import annotations

import json

import pytest

from flows.retrain import champion_report, check_domain, corpus_files, domain_variants, retrain_domain
from simcse_ops.config import ConfigError, load_params
from simcse_ops.readers import expand_paths
from tests.flows.conftest import read_artifact
from tests.flows.fake_project import calls, make_fake_project


def test_domain_variants_are_those_trained_on_domain_sources_only(params):
    # The project's own params: biomed trains on pubmedqa (role: domain); sup-nli, unsup-wiki don't.
    assert "biomed" in domain_variants(params)
    assert not {"base", "sup-nli", "unsup-wiki"} & set(domain_variants(params))


def test_domain_variants_are_params_domain_variants(params):
    assert set(domain_variants(params)) == set(params.domain_variants())  # the one rule


def test_corpus_files_are_what_the_readers_read(params):
    """The project's own biomed corpus: exactly the readers' expansion of its sources' paths."""
    root = params.data_root
    for source, files in corpus_files(params, check_domain(params, "biomed")).items():
        expected = expand_paths(source, params.sources[source], root)
        assert files and [root / f for f in files] == expected, source


def test_unknown_domain_names_the_known_ones(params):
    with pytest.raises(ConfigError, match=r"unknown domain 'legal'; known domains: biomed"):
        check_domain(params, "legal")
    with pytest.raises(ConfigError, match="unknown domain 'sup-nli'"):
        check_domain(params, "sup-nli")


def test_champion_report():
    before = {"version": 1, "decision": "promote", "promoted": True, "champion": 1}
    kept = {"version": 2, "decision": "reject", "promoted": False, "champion": 1,
            "reasons": ["fail: avg"]}
    r = champion_report(before, kept)
    assert r["new_version"] and not r["champion"] and r["previous_version"] == 1
    assert r["champion_version"] == 1 and r["reasons"] == ["fail: avg"]
    assert not champion_report(kept, kept)["new_version"]
    first = champion_report(None, {"version": 1, "decision": "promote", "promoted": True, "champion": 1})
    assert first["champion"] and first["new_version"]
    assert champion_report(None, None)["version"] is None


@pytest.fixture()
def project(tmp_path):
    return make_fake_project(tmp_path / "proj")


def test_a_source_matching_no_file_fails_as_ingest_would(project):
    params = load_params(project / "params.yaml")
    assert corpus_files(params, ("pubmedqa",)) == {"pubmedqa": ["domain/biomedical/ori_pqal.json"]}
    (project / "raw" / "domain" / "biomedical" / "ori_pqal.json").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"sources\.pubmedqa\.paths\[0\] = 'domain/biomedical/ori_pqal\*\.json'"):
        corpus_files(params, ("pubmedqa",))


def test_unknown_domain_fails_at_once(prefect_server, project):
    with pytest.raises(ConfigError, match="unknown domain 'wiki'; known domains: biomed"):
        retrain_domain(domain="wiki", workspace=str(project))
    assert calls(project) == []
    assert not (project / "dvc.lock").exists()


@pytest.mark.slow
def test_retrain_picks_up_a_new_domain_file_and_reports_the_new_champion(prefect_server, project):
    first = retrain_domain(domain="biomed", workspace=str(project))
    assert first["new_version"] and first["version"] == 1 and first["champion"]
    chain = ["ingest", "dedup", "validate", "train@base", "evaluate@base",  # register compares with base
             "train@wiki",  # the general variant: evaluate@biomed scores it as a reference
             "train@biomed", "evaluate@biomed", "bias@biomed", "register@biomed"]
    assert calls(project) == chain

    # Nothing changed: DVC skips every stage, the version stays.
    same = retrain_domain(domain="biomed", workspace=str(project))
    assert not same["new_version"] and same["version"] == 1
    assert len(calls(project)) == len(chain)

    # A new file matching the source's glob: ingest and everything downstream run again.
    params = load_params(project / "params.yaml")
    new = project / "raw" / "domain" / "biomedical" / "ori_pqal_2027.json"
    new.write_text(json.dumps({"2": {"QUESTION": "q2?"}}))
    assert "domain/biomedical/ori_pqal_2027.json" in corpus_files(params, ("pubmedqa",))["pubmedqa"]
    second = retrain_domain(domain="biomed", workspace=str(project))
    assert second["new_version"] and second["version"] == 2 and second["previous_version"] == 1
    assert second["champion"] and second["decision"] == "promote" and second["champion_version"] == 2
    assert calls(project)[len(chain):] == chain
    ingested = json.loads((project / "data/ingested/pubmedqa.json").read_text())
    assert any(f.endswith("ori_pqal_2027.json") for f in ingested)

    art = read_artifact("registry-biomed")
    assert "simcse-biomed version 2: promote (promoted to champion)" in art.data
    rows = json.loads(read_artifact("retrain-biomed-sts").data)
    assert [r["variant"] for r in rows] == ["biomed", "base"]
