"""The three pages a person opens, rendered by a real browser with the network off.

A tiny copy of the project (tests/integration/tiny_project.py: the real stages, dvc.yaml,
.dvc/config and web/, tiny data and a tiny random BERT) runs `dvc repro` from ingest to the run
report, then `dvc plots show`. Debian's Chromium (tests/integration/browser.py) opens
`dvc_plots/index.html`, `reports/data_docs/index.html` (and a batch page) and
`reports/run/index.html` from disk, refusing every network request, and the tests check what a
person would see: every plot with data drawn as SVG marks, the validation list complete with its
status, styled pages, and the report's tables holding the numbers in the tiny run's `metrics/`.
The committed real metrics' report is rendered too. Full-page screenshots go to the test's
temporary folder and must not be blank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simcse_ops.config import load_params
from simcse_ops.report import build_report, locate, write_report
from tests.integration.browser import chromium, is_blank, open_offline, svg_marks
from tests.integration.tiny_project import make_tiny_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOOTSTRAP_FONT = "-apple-system"  # bootstrap 4's body font stack: the local stylesheet applied


def _dvc(project: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
    assert r.returncode == 0, f"dvc {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, project_root, data_root, tiny_model_dir) -> Path:
    """The tiny project after `dvc repro` (every stage, the report last) and `dvc plots show`."""
    if not (project_root / "web" / "node_modules").is_dir():
        pytest.fail("web/node_modules missing: run `npm ci --prefix web` (.ci/run does)")
    proj = make_tiny_project(project_root, tmp_path_factory.mktemp("pages") / "proj", data_root, tiny_model_dir)
    _dvc(proj, "repro")
    _dvc(proj, "plots", "show")
    return proj


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _seen_offline(browser, page: Path, shots: Path):
    seen = open_offline(browser, page, settle_ms=1000)
    assert not seen.external, f"{page} asked the network for {seen.external}"
    assert not seen.errors, f"{page} raised script errors: {seen.errors}"
    png = seen.page.screenshot(path=str(shots / f"{page.parent.name}-{page.stem}.png"), full_page=True)
    assert not is_blank(png), f"{page}: the screenshot is blank"
    return seen


def test_dvc_plots_draw_every_plot_offline(project, browser, tmp_path):
    plots = json.loads(_dvc(project, "plots", "show", "--json"))["data"]
    with_data = {pid: len(r[0]["content"]["data"]["values"]) for pid, r in plots.items() if r}
    assert len(with_data) >= 6, plots.keys()  # loss, dev, STS, domain and SEAT bars of the tiny run
    seen = _seen_offline(browser, project / "dvc_plots" / "index.html", tmp_path)
    page = seen.page
    for pid, n_rows in with_data.items():
        div = "#" + pid.replace("/", "_").replace(".", "_").replace("-", "_")
        marks = svg_marks(page, f"{div} svg")
        assert marks and marks[0] > n_rows, f"{pid}: {n_rows} rows but {marks} SVG marks drawn"
    # a bar chart draws one bar per row of its CSV
    sts = "metrics/biomed/sts_tasks.csv"
    bars = page.evaluate("(d) => document.querySelectorAll(d + ' svg g.mark-rect path').length",
                         "#metrics_biomed_sts_tasks_csv")
    assert bars == with_data[sts] == 8, (bars, with_data[sts])  # 7 tasks and their avg
    # the domain chart: one bar per (task, model) row, side by side (web/plots/bar_grouped.json)
    dom = "metrics/biomed/domain_tasks.csv"
    bars = page.evaluate("(d) => document.querySelectorAll(d + ' svg g.mark-rect path').length",
                         "#metrics_biomed_domain_tasks_csv")
    assert bars == with_data[dom] >= 2, (bars, with_data[dom])


def test_data_docs_list_every_validation_offline(project, browser, tmp_path):
    summary = json.loads((project / "metrics" / "validate.json").read_text())
    docs = project / "reports" / "data_docs"
    seen = _seen_offline(browser, docs / "index.html", tmp_path)
    page = seen.page
    assert BOOTSTRAP_FONT in page.evaluate("getComputedStyle(document.body).fontFamily")
    # bootstrap-table filled the validation list from its data (all rows, not only the first page)
    rows = page.evaluate("""() => $('table.ge-index-page-validation-results-table')
                                 .bootstrapTable('getData').map(r => Object.values(r).join(' | '))""")
    assert len(rows) == len(summary["batches"]), rows
    for name, b in summary["batches"].items():
        source, _, split = name.partition("/")
        batch_id = f"{source}-{split or 'all'}"
        (row,) = [r for r in rows if f">{batch_id}<" in r or f" {batch_id} " in f" {r} "]
        assert summary["run_name"] in row
        gx_ok = b["failed_critical"] == 0 and b["failed_warning"] == 0  # GX's own status: every expectation
        assert ("Success" if gx_ok else "Failed") in row, row
    shown = page.inner_text("table.ge-index-page-validation-results-table")
    assert summary["run_name"] in shown and "Showing 1 to" in page.inner_text("body")

    # a batch page: named after its source and split, the run's name, styled, offline
    name, b = next(iter(summary["batches"].items()))
    batch = _seen_offline(browser, docs / b["docs_page"], tmp_path).page
    text = batch.inner_text("body")
    assert f"Data asset: {b['source']}" in text.replace("\n", " ") or b["source"] in text
    assert summary["run_name"] in text and "__none__" not in text and "Data asset: None" not in text
    assert BOOTSTRAP_FONT in batch.evaluate("getComputedStyle(document.body).fontFamily")


def _cells(page, variant: str, section: str) -> dict[tuple[str, str], float]:
    got = page.evaluate(
        """([v, s]) => Array.from(document.querySelectorAll(
                `td[data-variant="${v}"][data-section="${s}"]`))
              .map(td => [td.dataset.row, td.dataset.col, td.dataset.value, td.innerText])""",
        [variant, section],
    )
    return {(row, col): float(value) for row, col, value, text in got}


def _check_report(page, metrics: Path, variants: list[str], tasks: list[str]) -> None:
    from simcse_ops.scores import sts_row

    for v in variants:
        # the served backend's row, as the gate saw it (serve.backend auto: the lowest offered)
        served = json.loads((metrics / v / "registry.json").read_text()).get("serve_backend") or "torch"
        sts = sts_row(json.loads((metrics / v / "sts.json").read_text()), tasks, served, metrics / v / "sts.json")
        shown = _cells(page, v, "sts")
        for t in [*tasks, "avg"]:
            assert shown[(t, "challenger")] == sts[t], (v, t)
            assert page.locator(f'td[data-variant="{v}"][data-section="sts"][data-row="{t}"]'
                                f'[data-col="challenger"]').inner_text() == f"{sts[t]:.2f}"
        decision = json.loads((metrics / v / "registry.json").read_text())
        gate = page.inner_text(f"#{v}-gate")
        assert decision["decision"] in gate and all(r in gate for r in decision["reasons"])
    dedup = json.loads((metrics / "dedup.json").read_text())
    totals = page.evaluate("""() => Object.fromEntries(Array.from(
        document.querySelectorAll('td[data-section="dedup"][data-row="total"]'))
        .map(td => [td.dataset.col, Number(td.dataset.value)]))""")
    assert totals["rows_out"] == dedup["totals"]["rows_out"] and totals["rows_in"] == dedup["totals"]["rows_in"]
    validate = json.loads((metrics / "validate.json").read_text())
    rows = page.evaluate("""() => Object.fromEntries(Array.from(
        document.querySelectorAll('td[data-section="validation"][data-col="rows"]'))
        .map(td => [td.dataset.row, Number(td.dataset.value)]))""")
    assert rows == {name: b["rows"] for name, b in validate["batches"].items()}
    # every chart drawn (inline SVG from vl-convert: nothing to load)
    marks = svg_marks(page)
    assert marks and all(m > 0 for m in marks), marks


def test_run_report_holds_the_metrics_offline(project, browser, tmp_path):
    params = load_params(project / "params.yaml")
    seen = _seen_offline(browser, project / "reports" / "run" / "index.html", tmp_path)
    _check_report(seen.page, project / "metrics", list(params.variants), list(params.evaluate.tasks))
    # Data Docs links resolve to pages of the tiny run's site
    for href in seen.page.evaluate("Array.from(document.querySelectorAll('a[href*=\"data_docs\"]')).map(a => a.href)"):
        assert Path(href.removeprefix("file://")).is_file(), href


def test_committed_run_report_renders_offline(project_root, browser, tmp_path):
    """The report of the committed metrics of the four real variants (no data needed)."""
    params = load_params(project_root / "params.yaml")
    run = locate(project_root, list(params.variants), params.register.base_variant,
                 list(params.evaluate.tasks), tmp_path / "run")
    page = write_report(tmp_path / "run", build_report(run, {"git.commit": "test", "time": "now"}))
    seen = _seen_offline(browser, page, tmp_path)
    _check_report(seen.page, project_root / "metrics", list(params.variants), list(params.evaluate.tasks))
