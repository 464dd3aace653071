"""A typo in any params.yaml section stops `dvc repro` in its first stage, before any training.

Real `dvc repro` on the tiny project (tests/integration/tiny_project.py): the first stage to run
loads params.yaml, which types and checks every section, so a misspelt key under `register:` (used
only by the last stage) or `bias.gate:` fails in seconds with the file and the dotted key.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from tests.integration.tiny_project import make_tiny_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root, data_root, tiny_model_dir):
    return make_tiny_project(project_root, tmp_path_factory.mktemp("typo") / "proj", data_root,
                             tiny_model_dir)


@pytest.mark.parametrize("section, key, dotted", [
    ("register", "epsilom", "register: unknown key(s) 'epsilom'"),
    ("bias", "gate", "bias.gate: unknown key(s) 'max_n_signifcant_increase'"),
])
def test_typo_fails_dvc_repro_in_its_first_stage(project, section, key, dotted):
    params_path = project / "params.yaml"
    original = params_path.read_text()
    raw = yaml.safe_load(original)
    if key == "gate":
        raw[section]["gate"] = {"max_n_signifcant_increase": 1}
    else:
        raw[section][key] = 0.5
    params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, capture_output=True,
                              text=True, timeout=300)
        elapsed = time.perf_counter() - t0
    finally:
        params_path.write_text(original)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"params.yaml: {dotted}" in out, out
    assert "Running stage 'ingest'" in out and "Running stage 'train" not in out, out
    assert not (project / "data" / "ingested").exists()
    assert "Traceback" not in out, out
    # The whole `dvc repro` (DVC's own start-up included) stops within seconds.
    assert elapsed < 5.0, f"dvc repro took {elapsed:.1f} s to fail on a typo"
