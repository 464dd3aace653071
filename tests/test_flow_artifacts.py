"""`simcse_ops.flow_artifacts`: what the flows publish, rendered from the stages' files."""

from __future__ import annotations

import json

import pytest

from simcse_ops.config import ConfigError
from simcse_ops.flow_artifacts import artifact_key, domain_rows, mlflow_run_url, registry_file, registry_markdown, sts_rows
from tests.flows.fake_project import TASKS, make_fake_project
from tests.registry_support import write_domain


def test_artifact_keys_and_links():
    assert artifact_key("retrain-Bio_Med", "sts") == "retrain-bio-med-sts"
    assert mlflow_run_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    assert mlflow_run_url("http://h:5000", None, None) is None
    md = registry_markdown("biomed", {"name": "simcse-biomed", "version": 4, "decision": "reject",
                                      "promoted": False, "compared_to": "champion v3", "champion": 3,
                                      "reasons": ["fail: avg 70.10 vs champion v3 71.00"],
                                      "run_id": "abc"}, "http://h:5000")
    assert "# simcse-biomed version 4: reject (not promoted)" in md
    assert "champion now: version 3" in md
    assert "fail: avg 70.10 vs champion v3 71.00" in md
    assert "[abc](http://h:5000/#/runs/abc)" in md


def test_domain_table_shows_bm25_base_champion_and_challenger_with_intervals(tmp_path):
    folder = write_domain(tmp_path / "anywhere" / "biomed", "biomed", [1.0, 0.5, 0.0], [0.5, 0.5, 0.5])
    decision = {"domain": {"pubmedqa_conclusion": {"metric": "ndcg@10", "challenger": 50.0, "champion": 48.25}}}
    [row] = domain_rows(folder / "domain.json", "biomed", decision)
    assert row == {"task": "pubmedqa_conclusion (primary)", "metric": "ndcg@10", "n": 3, "bm25": None,
                   "base": "50.00 [49.00, 51.00]", "champion": "48.25", "challenger": "50.00 [49.00, 51.00]"}
    assert domain_rows(tmp_path / "sup-nli" / "domain.json", "sup-nli", None) == []  # not evaluated: no table


def test_sts_rows_read_the_given_files_and_skip_absent_ones(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({**{t: 1.0 for t in TASKS}, "avg": 1.0}))
    rows = sts_rows({"a": tmp_path / "a.json", "b": tmp_path / "b.json"}, TASKS)
    assert rows == [{"variant": "a", **{t: 1.0 for t in TASKS}, "avg": 1.0}]
    (tmp_path / "c.json").write_text(json.dumps({"avg": 1.0}))
    with pytest.raises(ValueError, match=r"c\.json: no figure for sts12"):
        sts_rows({"c": tmp_path / "c.json"}, TASKS)


@pytest.fixture()
def project(tmp_path):
    return make_fake_project(tmp_path / "proj", retries=1)


def test_the_registry_file_is_where_dvc_yaml_declares_it(project):
    # The fake project keeps its results under results/V/: the path is dvc.yaml's, not the flow's.
    assert registry_file(project, "biomed") == project / "results" / "biomed" / "registry.json"
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace('[{"results/${key}/registry.json": {cache: false}}]', "[]"))
    with pytest.raises(ConfigError, match=r"dvc\.yaml: stage 'register@biomed' declares no output "
                                          r"named 'registry\.json'"):
        registry_file(project, "biomed")
    with pytest.raises(ConfigError, match=r"dvc\.yaml: no stage 'register@nope'"):
        registry_file(project, "nope")
