"""The run report (simcse_ops.report): every figure on the page equals the metrics files (a tiny
synthetic run and the committed metrics/), strings are escaped, nothing is fetched from the
network, one inline SVG per chart, missing optional files give a note, malformed ones an error
naming the file; and dvc.yaml's `report` stage depends on every file the report reads."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from simcse_ops.config import load_params
from simcse_ops.errors import DataError
from simcse_ops.report import RunFiles, VariantFiles, build_report, locate, write_report
from tests import dvc_deps_support as deps

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")
IDENTITY = {"git.commit": "abc123", "git.dirty": "false", "time": "2026-01-01T00:00:00+00:00"}


class Cells(HTMLParser):
    """Every element with `data-section` and `data-col`: (variant, section, row, col) -> its
    attributes and its text; and every `src`/`href` and tag seen."""

    def __init__(self, page: str):
        super().__init__()
        self.cells: dict[tuple, dict] = {}
        self.links: list[str] = []
        self.tags: list[str] = []
        self._open: list[dict] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if "data-section" in a and "data-col" in a:
            cell = {**a, "text": ""}
            self.cells[(a.get("data-variant"), a["data-section"], a["data-row"], a["data-col"])] = cell
            self._open.append(cell)

    def handle_endtag(self, tag):
        if tag == "td" and self._open:
            self._open.pop()

    def handle_data(self, data):
        for cell in self._open:
            cell["text"] += data

    def value(self, *key) -> float:
        return float(self.cells[key]["data-value"])

    def text(self, *key) -> str:
        return self.cells[key]["text"].strip()


# --------------------------------------------------------------------------------------------
# A tiny synthetic run


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _files(root: Path, name: str) -> VariantFiles:
    d = root / "metrics" / name
    return VariantFiles(name, d / "sts.json", d / "domain.json", d / "bias.json", d / "registry.json",
                        d / "train" / "loss.csv", d / "train" / "dev.csv", d / "train" / "train.json")


def _sts(offset: float) -> dict:
    s = {t: round(70.0 + i + offset, 2) for i, t in enumerate(TASKS)}
    return {**s, "avg": round(sum(s.values()) / len(s), 2)}


def synthetic_run(root: Path) -> RunFiles:
    """base (pretrained, no domain tasks, registered) and demo (trained, one domain task, gated
    against a champion; a reason and a SEAT test name with markup)."""
    base, demo = _files(root, "base"), _files(root, "demo")
    _write(base.sts, _sts(0.0))
    _write(base.domain, {"variant": "base", "primary": None, "models": [], "tasks": {}})
    _write(base.bias, {"summary": {"mean_abs_effect_size": 0.5, "n_significant": 1, "n_tests": 1, "alpha": 0.01},
                       "tests": {"weat1": {"effect_size": 1.25, "p_value": 0.001, "p_value_holm": 0.001,
                                           "significant": True}}})
    _write(base.registry, {"name": "simcse-base", "version": 1, "decision": "promote", "promoted": True,
                           "compared_to": "itself (the reference)", "reasons": ["ok: base is the reference"],
                           "champion": 1, "run_id": "r0", "serve_backend": "torch", "domain": {}})
    _write(base.loss, "step,epoch,loss,lr\n")
    _write(base.dev, "step,dev_score\n")
    _write(base.train, {"variant": "base", "method": "pretrained", "steps": 0})

    _write(demo.sts, _sts(1.5))
    res = lambda v: {"metrics": {"ndcg@10": v, "mrr@10": v - 1}, "ci": {"ndcg@10": [v - 2.5, v + 2.0]}}  # noqa: E731
    _write(demo.domain, {"variant": "demo", "primary": "qa", "models": ["demo", "base", "bm25"],
                         "bootstrap": {"confidence": 0.9},
                         "tasks": {"qa": {"kind": "retrieval", "metric": "ndcg@10", "n": 500,
                                          "results": {"demo": res(91.2187), "base": res(88.4981), "bm25": res(83.797)},
                                          "vs_base": {"demo": {"diff": 2.7206, "ci": [1.75, 3.77], "p_at_most_0": 0.0}}}}})
    _write(demo.bias, {"summary": {"mean_abs_effect_size": 0.7154, "n_significant": 1, "n_tests": 2, "alpha": 0.01},
                       "tests": {"weat<b>&\"x\"": {"effect_size": -0.3333, "p_value": 0.6, "p_value_holm": 1.0,
                                                  "significant": False},
                                 "weat2": {"effect_size": 1.5151, "p_value": 0.0001, "p_value_holm": 0.0002,
                                           "significant": True}}})
    _write(demo.registry, {"name": "simcse-demo", "version": 3, "decision": "reject", "promoted": False,
                           "compared_to": "champion v2", "champion": 2, "run_id": "r3", "serve_backend": "torch",
                           "reference_sts": {"backend": "torch", **_sts(1.25)},
                           "reasons": ["fail: qa <script>alert(1)</script> worse & not ok"],
                           "domain": {"qa": {"metric": "ndcg@10", "challenger": 91.2187, "ci": [89.0, 93.0],
                                             "champion": 92.4}}})
    _write(demo.loss, "step,epoch,loss,lr\n1,0.5,0.9,3e-05\n2,1.0,0.5,2e-05\n")
    _write(demo.dev, "step,dev_score\n0,80.0\n2,81.5\n")
    _write(demo.train, {"variant": "demo", "method": "unsup", "dev_metric": "stsb_dev_spearman", "exported_step": 2,
                        "best_dev_score": 81.5, "steps": 2, "examples": 64})

    dedup = _write(root / "metrics" / "dedup.json", {
        "totals": {"rows_in": 100, "rows_out": 90, "contamination_exact": 3, "contamination_near": 2,
                   "exact_duplicate": 4, "near_duplicate": 1},
        "sources": {"wiki": {"rows_in": 100, "rows_out": 90, "removed": {
            "contamination_exact": 3, "contamination_near": 2, "exact_duplicate": 4, "near_duplicate": 1}}},
        "decontamination": {"by_eval_set": {"stsb/test": 5}}})
    validate = _write(root / "metrics" / "validate.json", {
        "success": True, "critical_failures": 0, "warnings": 1, "run_name": "run <42>",
        "batches": {
            "stsb/test": {"source": "stsb", "kind": "sts", "rows": 1379, "expectations": 11, "success": True,
                          "failed_critical": 0, "failed_warning": 0, "failures": [],
                          "docs_page": "validations/stsb_test.html"},
            "wiki": {"source": "wiki", "kind": "corpus", "rows": 90, "expectations": 7, "success": True,
                     "failed_critical": 0, "failed_warning": 1,
                     "failures": [{"check": "length_tokens", "severity": "warning", "column": "_tokens_text",
                                   "observed": "3 of 90 rows", "expected": "min_value=3"}]}}})
    return RunFiles((base, demo), "base", TASKS, dedup, validate, "../data_docs")


@pytest.fixture
def synthetic(tmp_path):
    run = synthetic_run(tmp_path)
    return run, build_report(run, IDENTITY)


def test_synthetic_figures_equal_the_files(synthetic):
    run, page = synthetic
    c = Cells(page)
    base, demo = run.variants
    b, d = json.loads(base.sts.read_text()), json.loads(demo.sts.read_text())
    for t in [*TASKS, "avg"]:
        assert c.value("demo", "sts", t, "challenger") == d[t] and c.text("demo", "sts", t, "challenger") == f"{d[t]:.2f}"
        assert c.value("demo", "sts", t, "base") == b[t]
        assert c.value("demo", "sts", t, "diff") == pytest.approx(d[t] - b[t])
        assert c.value("base", "sts", t, "challenger") == b[t]
        # registry.json reference_sts: the champion the gate compared with
        assert c.value("demo", "sts", t, "champion") == _sts(1.25)[t]
        assert c.value("demo", "sts", t, "diff-champion") == pytest.approx(d[t] - _sts(1.25)[t])
    assert ("base", "sts", "avg", "base") not in c.cells  # base is not shown beside itself

    qa = json.loads(demo.domain.read_text())["tasks"]["qa"]
    for model in ("demo", "base", "bm25"):
        cell = c.cells[("demo", "domain", "qa", model)]
        r = qa["results"][model]
        assert float(cell["data-value"]) == r["metrics"]["ndcg@10"]
        assert [float(cell["data-ci-low"]), float(cell["data-ci-high"])] == r["ci"]["ndcg@10"]
    assert c.text("demo", "domain", "qa", "demo") == "91.22 [88.72, 93.22]"
    assert c.value("demo", "domain", "qa", "diff") == 2.7206 and c.text("demo", "domain", "qa", "diff").startswith("+2.72")
    assert c.value("demo", "domain", "qa", "champion") == 92.4  # registry.json: the champion the gate saw
    assert "90% bootstrap intervals" in page

    assert c.value("demo", "bias", "weat2", "effect_size") == 1.5151
    assert c.text("demo", "bias", "weat2", "effect_size") == "+1.515"
    assert c.value("demo", "bias-summary", "summary", "mean_abs_effect_size") == 0.7154
    assert c.value("demo", "bias-summary", "summary", "n_significant") == 1
    sig = re.findall(r'<td class="sig" data-col="significant">([^<]*)</td>', page)
    assert sig == ["\u2605 significant", "\u2605 significant"]  # weat1 of base, weat2 of demo

    assert c.value(None, "dedup", "total", "rows_out") == 90 and c.text(None, "dedup", "total", "rows_out") == "90"
    assert c.value(None, "dedup", "wiki", "contamination_exact") == 3
    assert c.value(None, "decontamination", "stsb/test", "removed") == 5
    assert c.value(None, "validation", "stsb/test", "rows") == 1379
    assert c.value(None, "validation", "wiki", "failed_warning") == 1


def test_gate_decision_reference_links_and_identity(synthetic):
    _run, page = synthetic
    assert 'data-variant="demo" data-decision="reject">reject</strong>' in page
    assert "compared with champion v2" in page
    assert "compared it with champion v2 (the champion columns, on the torch backend)" in page
    assert "No champion before this version" not in page.split('id="demo"')[1]
    links = Cells(page).links
    assert "../data_docs/validations/stsb_test.html" in links  # validate.json docs_page
    assert links.count("../data_docs/index.html") == 2  # the summary and the batch without a page
    assert "abc123" in page and "2026-01-01T00:00:00+00:00" in page and "run &lt;42&gt;" in page
    for v in ("base", "demo"):
        for section in ("sts", "domain", "training", "bias", "gate"):
            assert f'href="#{v}-{section}"' in page and f'id="{v}-{section}"' in page


def test_strings_from_files_are_escaped(synthetic):
    _run, page = synthetic
    assert "<script" not in page and "<b>" not in page
    assert "fail: qa &lt;script&gt;alert(1)&lt;/script&gt; worse &amp; not ok" in page
    assert "weat&lt;b&gt;&amp;&quot;x&quot;" in page
    assert Cells(page).cells[("demo", "bias", 'weat<b>&"x"', "effect_size")]["data-value"] == "-0.3333"


def _external(page: str) -> list[str]:
    """References a browser would fetch from the network (not XML namespace names)."""
    found = re.findall(r'(?:src|href|xlink:href)\s*=\s*["\']\s*((?:https?:)?//[^"\']*)', page, re.I)
    found += re.findall(r"@import|url\(\s*['\"]?(?:https?:)?//", page, re.I)
    found += re.findall(r"<(?:script|link|iframe|img|object|embed)\b", page, re.I)
    return found


def test_page_is_self_contained_with_one_svg_per_chart(synthetic, tmp_path):
    run, page = synthetic
    assert _external(page) == []
    assert _external('<img src="https://x/y.png">') and _external("<style>@import 'a.css'</style>")
    demo = page.split('id="demo"')[1]
    base = page.split('id="base"')[1].split('id="demo"')[0]
    assert demo.count('<figure class="chart"><svg') == 3  # loss, dev, SEAT
    assert base.count('<figure class="chart"><svg') == 1  # SEAT only: base is not trained
    assert "No loss or dev curve: method pretrained: not trained." in base
    out = write_report(tmp_path / "reports" / "run", page)
    assert out == tmp_path / "reports" / "run" / "index.html" and out.read_text(encoding="utf-8") == page


def test_missing_optional_files_give_a_note(tmp_path):
    run = synthetic_run(tmp_path)
    demo = run.variants[1]
    for p in (demo.registry, demo.domain, demo.bias, demo.loss, demo.dev, demo.train, run.dedup, run.validate):
        p.unlink()
    page = build_report(run, IDENTITY)
    section = page.split('id="demo"')[1]
    assert "Not registered: registry.json not found (run dvc repro register@demo)." in section
    assert "No domain tasks: domain.json not found" in section
    assert "bias.json not found: run the bias stage (dvc repro bias@demo)." in section
    assert "No loss or dev curve: no training curves (run the train stage)." in section
    assert "dedup.json not found" in page and "validate.json not found" in page
    assert Cells(page).value("demo", "sts", "avg", "challenger") == json.loads(demo.sts.read_text())["avg"]
    # no domain tasks listed (a general variant)
    assert "No domain tasks: domain.json lists none" in page.split('id="base"')[1]


@pytest.mark.parametrize("target, content, message", [
    ("sts", "{not json", r"sts\.json:1: found invalid JSON"),
    ("sts", json.dumps({"sts12": 1.0}), r"demo/sts\.json: found no score for sts13, .*avg"),
    ("bias", json.dumps({"summary": {}, "tests": []}), r"demo/bias\.json: found keys"),
    ("bias", json.dumps({"summary": {"mean_abs_effect_size": "high"}, "tests": {}}),
     r"demo/bias\.json: found summary\.mean_abs_effect_size = 'high'; expected a number"),
    ("domain", json.dumps({"models": ["demo"], "tasks": {"qa": {"metric": "ap", "n": 1,
                                                             "results": {"demo": {"ci": {}}}}}}),
     r"demo/domain\.json: found KeyError: 'metrics'"),
    ("loss", "step,loss\n1,0.5\n2,oops\n", r"demo/train/loss\.csv:3: found .*oops"),
    ("registry", "[1, 2]", r"demo/registry\.json: found list; expected a JSON object"),
])
def test_a_malformed_file_is_an_error_naming_it(tmp_path, target, content, message):
    run = synthetic_run(tmp_path)
    _write(getattr(run.variants[1], target), content)
    with pytest.raises(DataError, match=message):
        build_report(run, IDENTITY)


# --------------------------------------------------------------------------------------------
# The committed metrics/


@pytest.fixture(scope="module")
def real():
    params = load_params(ROOT / "params.yaml")
    run = locate(ROOT, list(params.variants), params.register.base_variant, list(params.evaluate.tasks),
                 "reports/run")
    return params, run, build_report(run, IDENTITY)


def test_real_figures_equal_the_committed_metrics(real):
    params, run, page = real
    c = Cells(page)
    assert [v.name for v in run.variants] == list(params.variants)
    from simcse_ops.scores import has_sts, sts_row

    tasks = list(params.evaluate.tasks)
    base = json.loads(run.variants[0].sts.read_text())
    for v in run.variants:
        assert v.sts == ROOT / "metrics" / v.name / "sts.json"  # where dvc.yaml declares it
        served = json.loads(v.registry.read_text()).get("serve_backend") or "torch"  # the row the gate saw
        sts = sts_row(json.loads(v.sts.read_text()), tasks, served, v.sts)
        theirs = sts_row(base, tasks, served if has_sts(base, served) else "torch", v.sts)
        for t in [*tasks, "avg"]:
            assert c.value(v.name, "sts", t, "challenger") == sts[t]
            if v.name != params.register.base_variant:
                assert c.value(v.name, "sts", t, "base") == theirs[t]
        domain = json.loads(v.domain.read_text())
        for task, t in domain["tasks"].items():
            for model, r in t["results"].items():
                cell = c.cells[(v.name, "domain", task, model)]
                assert float(cell["data-value"]) == r["metrics"][t["metric"]]
                assert [float(cell["data-ci-low"]), float(cell["data-ci-high"])] == r["ci"][t["metric"]]
        bias = json.loads(v.bias.read_text())
        for name, t in bias["tests"].items():
            assert c.value(v.name, "bias", name, "effect_size") == t["effect_size"]
        assert page.count(f'data-variant="{v.name}" data-decision="') == 1
        for reason in json.loads(v.registry.read_text())["reasons"]:
            assert html.escape(reason) in page
    dedup = json.loads(run.dedup.read_text())
    for k, n in dedup["totals"].items():
        assert c.value(None, "dedup", "total", k) == n
    for name, b in json.loads(run.validate.read_text())["batches"].items():
        assert c.value(None, "validation", name, "rows") == b["rows"]
    assert run.data_docs == "../data_docs" and _external(page) == []
    assert page.count('<figure class="chart"><svg') == 4 + 2 * 3  # SEAT each, curves for the 3 trained


def test_report_stage_deps_cover_every_file_it_reads(real):
    """Every file the report reads lies inside a dep of the `report` stage (else DVC would not
    rerun it when that file changes)."""
    _params, run, _page = real
    stage = next(s for s in deps.expand_stages(deps.load_dvc_yaml()) if s.name == "report")
    read = sorted({p.relative_to(ROOT).as_posix() for p in run.paths()})
    missing = [p for p in read if not deps.covered(p, stage.deps)]
    assert not missing, f"dvc.yaml: stage report reads {', '.join(missing)} but does not list it in deps"
