"""The report stage end to end: on the committed metrics of the real project, and in a scratch
copy of it with a malformed metrics file (exit 3, one line naming the file)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from simcse_ops.errors import EXIT_DATA, run_main
from stages import report as stage

ROOT = Path(__file__).resolve().parents[2]


def test_stage_writes_the_page_for_every_variant(tmp_path, params, capsys):
    out = tmp_path / "reports" / "run"
    page = stage.main(["--params", str(ROOT / "params.yaml"), "--out", str(out)])
    assert page == out / "index.html"
    text = page.read_text(encoding="utf-8")
    assert f"report: {len(params.variants)} variant(s) -> {page}" in capsys.readouterr().out
    for v in params.variants:
        assert f'<section class="variant" id="{v}" data-variant="{v}">' in text
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head:
        assert head in text
    # The Data Docs link is relative to the page and leads to validate's declared output.
    docs = (out / re.search(r'<a href="([^"]+)">Data Docs</a>', text).group(1)).resolve()
    assert docs == ROOT / "reports" / "data_docs" / "index.html"


def _scratch_project(tmp_path: Path) -> Path:
    """dvc.yaml, params.yaml and metrics/ (without the per-item files) of the real project."""
    root = tmp_path / "project"
    shutil.copytree(ROOT / "metrics", root / "metrics", ignore=shutil.ignore_patterns("domain_items.json"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, root / f)
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    return root


def test_a_malformed_metrics_file_fails_the_stage_naming_it(tmp_path, capsys):
    root = _scratch_project(tmp_path)
    (root / "metrics" / "biomed" / "bias.json").write_text('{"summary": {}, "tests": []}')
    status = run_main(stage.main, ["--params", str(root / "params.yaml"), "--out", str(root / "reports" / "run")])
    assert status == EXIT_DATA
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"report: error: {root / 'metrics' / 'biomed' / 'bias.json'}: found keys ['summary', 'tests']")
    assert not (root / "reports" / "run").exists()  # nothing half-written
