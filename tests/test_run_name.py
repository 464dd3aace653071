"""simcse_ops.run_name: the pipeline run a stage belongs to."""

from __future__ import annotations

import datetime as dt
import re

from simcse_ops.run_name import RUN_NAME_ENV, current_run_name, git_short_sha, safe_run_name

NOON = dt.datetime(2026, 1, 2, 12, 0, 5, tzinfo=dt.timezone.utc)


def test_a_flow_run_name_from_the_environment_wins(monkeypatch):
    monkeypatch.setenv(RUN_NAME_ENV, "crimson-lemur")
    assert current_run_name(now=NOON) == "crimson-lemur"


def test_without_a_flow_the_name_says_dvc_repro_commit_and_time(monkeypatch, project_root):
    monkeypatch.delenv(RUN_NAME_ENV, raising=False)
    sha = git_short_sha(project_root)
    name = current_run_name(project_root, now=NOON)
    if sha is None:  # a copy without git history
        assert name == "dvc-repro-20260102T120005Z"
    else:
        assert re.fullmatch(r"[0-9a-f]{4,40}", sha)
        assert name == f"dvc-repro-{sha}-20260102T120005Z"


def test_outside_a_checkout_there_is_no_commit(tmp_path, monkeypatch):
    monkeypatch.delenv(RUN_NAME_ENV, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_short_sha(tmp_path) is None
    assert current_run_name(tmp_path, now=NOON) == "dvc-repro-20260102T120005Z"


def test_names_are_one_safe_folder_name():
    assert safe_run_name("brave otter/42") == "brave-otter-42"
    assert safe_run_name("../..") == "run"
    assert safe_run_name("v1.2_ok-3") == "v1.2_ok-3"
