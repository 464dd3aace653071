"""simcse_ops.expectations: GX Core 1.x suites per data kind, run on small real-schema batches."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pandas as pd
import pytest

from simcse_ops.config import ConfigError, ValidateConfig, _build
from simcse_ops.expectations import (
    Batch,
    ValidationFailed,
    build_suite,
    prepare_frame,
    validate_batches,
)
from simcse_ops.run_name import RUN_NAME_ENV
from simcse_ops.web_assets import NODE_MODULES_ENV, WebAssetsMissing
from tests.hygiene_fixtures import corpus_table, nli_table, real_sentences, sts_table

CFG = ValidateConfig()


def _batch(kind, table, name="src", **parameters) -> Batch:
    return Batch(name, name.split("/")[0], kind, Path(f"data/{name}.parquet"),
                 prepare_frame(kind, table.to_pandas()), parameters)


def _failed(summary, batch) -> dict[str, str]:
    return {f["check"]: f["severity"] for f in summary["batches"][batch]["failures"]}


@pytest.fixture(scope="module")
def sents(data_root):
    return real_sentences(data_root, 60)


def test_suites_use_gx_expectations_with_severity_meta():
    suite = build_suite("sts", CFG)
    types = {e.expectation_type for e in suite.expectations}
    assert {"expect_column_values_to_be_between", "expect_table_row_count_to_equal",
            "expect_column_values_to_not_be_null"} <= types
    assert all(e.severity in ("critical", "warning") and e.meta["check"] for e in suite.expectations)
    assert {e.meta["check"]: e.severity for e in suite.expectations}["identical_pairs"] == "warning"
    with pytest.raises(ValueError, match="no suite"):
        build_suite("seat", CFG)


def test_disabled_check_is_not_built():
    cfg = _build(ValidateConfig, {"corpus": {"non_latin": {"enabled": False}}}, "validate", Path("p.yaml"))
    checks = {e.meta["check"] for e in build_suite("corpus", cfg).expectations}
    assert "non_latin" not in checks and "unique" in checks


def test_params_are_strict():
    with pytest.raises(ConfigError, match="severity"):
        _build(ValidateConfig, {"corpus": {"unique": {"severity": "fatal"}}}, "validate", Path("p.yaml"))
    from simcse_ops.config import parse_params

    raw = {"data": {}, "ingest": {}, "sources": {}, "evaluate": {"tasks": {}}, "variants": {},
           "validate": {"sts": {"score_range": {"default": [5, 0]}}}}
    with pytest.raises(ConfigError, match=r"p\.yaml: validate\.sts\.score_range\.default: expected \[min, max\]"):
        parse_params(raw, "p.yaml")


def test_clean_batches_pass(sents):
    batches = [
        _batch("corpus", corpus_table(sents[:30]), "corp"),
        _batch("nli", nli_table([(sents[30 + k], sents[40 + k], sents[50 + k]) for k in range(10)]), "nli"),
        _batch("sts", sts_table([(sents[k], sents[k + 1], k % 6) for k in range(12)]), "sts/test",
               score_min=0.0, score_max=5.0, row_count=12),
    ]
    summary = validate_batches(batches, CFG)
    assert summary["success"], summary
    assert summary["critical_failures"] == 0
    assert summary["batches"]["sts/test"]["expectations"] >= 8


def test_bad_corpus_is_caught(sents):
    texts = sents[:20] + [None, "   ", sents[0].upper() + "  ", "bad\x00byte " + sents[1]]
    summary = validate_batches([_batch("corpus", corpus_table(texts), "corp")], CFG)
    failed = _failed(summary, "corp")
    assert failed["not_null"] == "critical"
    assert failed["not_empty"] == "critical"
    assert failed["unique"] == "critical"  # the upper-cased copy equals sents[0] once normalised
    assert failed["nonprintable"] == "critical"
    assert not summary["success"]
    f = next(f for f in summary["_failures"] if f["check"] == "not_null")
    assert f["column"] == "text" and "1 of 24 rows" in f["observed"]


def test_empty_corpus_fails_row_count():
    summary = validate_batches([_batch("corpus", corpus_table([]), "corp")], CFG)
    f = next(f for f in summary["_failures"] if f["check"] == "row_count")
    assert f["observed"] == "0" and "min_value=1" in f["expected"]


def test_sts_score_range_row_count_and_splits(sents):
    rows = [(sents[k], sents[k + 1], 2.5) for k in range(10)] + [(sents[20], sents[21], 7.5)]
    table = sts_table(rows, split=["test"] * 10 + ["validation"])
    summary = validate_batches([_batch("sts", table, "sts/test", score_min=0.0, score_max=5.0, row_count=10)], CFG)
    failed = _failed(summary, "sts/test")
    assert set(failed) == {"score_range", "row_counts", "splits"}
    msgs = {f["check"]: f for f in summary["_failures"]}
    assert "7.5" in msgs["score_range"]["observed"]
    assert "max_value=5.0" in msgs["score_range"]["expected"]
    assert msgs["row_counts"]["observed"] == "11" and "value=10" in msgs["row_counts"]["expected"]
    text = str(ValidationFailed(summary["_failures"]))
    assert "sts/test" in text and "score_range" in text and "expect_column_values_to_be_between on score" in text


def test_warning_is_recorded_not_fatal(sents):
    triples = [(sents[k], sents[k], sents[k + 30]) for k in range(3)] + \
              [(sents[k], sents[k + 10], sents[k + 30]) for k in range(3, 20)]
    summary = validate_batches([_batch("nli", nli_table(triples), "nli")], CFG)
    assert summary["success"]
    assert _failed(summary, "nli") == {"identical_pairs": "warning"}
    assert summary["warnings"] == 1


def test_data_docs_site_is_built(sents, tmp_path):
    validate_batches([_batch("corpus", corpus_table(sents[:10]), "corp")], CFG, tmp_path / "docs")
    docs = tmp_path / "docs"
    assert (docs / "index.html").is_file()
    assert (docs / "expectations" / "simcse_corpus.html").is_file()
    pages = list((docs / "validations" / "simcse_corpus").rglob("*.html"))
    assert [p.name for p in pages] == ["corp-all.html"]  # named after the source and the split
    assert "simcse_corpus" in (docs / "index.html").read_text(encoding="utf-8")


class _LocalRefs(HTMLParser):
    """The local files a page loads: <script src>, <link href>, <img src> (not <a> links)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.remote: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        ref = {"script": a.get("src"), "link": a.get("href"), "img": a.get("src")}.get(tag)
        if not ref or ref.startswith("data:"):
            return
        (self.remote if urlsplit(ref).scheme or ref.startswith("//") else self.refs).append(ref)


def _unresolved(page: Path) -> tuple[list[str], list[str], int]:
    parser = _LocalRefs()
    parser.feed(page.read_text(encoding="utf-8"))
    missing = [r for r in parser.refs if not (page.parent / unquote(urlsplit(r).path)).resolve().is_file()]
    return missing, parser.remote, len(parser.refs)


def _spec_value(page: str, key: str) -> str | None:
    """The value beside `key` in a result page's Batch Spec table (under "Show more info...")."""
    m = re.search(rf">{key}</span>(?:(?!</tr>).)*?<span[^>]*>([^<]+)</span>", page, flags=re.S)
    return m.group(1).strip() if m else None


@pytest.fixture(scope="module")
def offline_site(sents, tmp_path_factory):
    """A site of three small batches: a training table and two splits of one evaluation set."""
    docs = tmp_path_factory.mktemp("site") / "docs"
    sts = sts_table([(sents[k], sents[k + 1], 2.5) for k in range(6)])
    batches = [_batch("corpus", corpus_table(sents[:10]), "corp"),
               _batch("sts", sts, "stsb/test", score_min=0.0, score_max=5.0, row_count=6),
               _batch("sts", sts, "stsb/dev", score_min=0.0, score_max=5.0, row_count=6)]
    summary = validate_batches(batches, CFG, docs, run_name="brave-otter 42")
    return docs, summary


def test_offline_site_records_run_name_and_each_batch_page(offline_site):
    docs, summary = offline_site
    assert summary["run_name"] == "brave-otter-42"  # one folder name
    assert list(summary)[:5] == ["success", "critical_failures", "warnings", "run_name", "batches"]
    pages = {name: b["docs_page"] for name, b in summary["batches"].items()}
    assert len(set(pages.values())) == 3
    for name, page in pages.items():
        suite = "simcse_corpus" if name == "corp" else "simcse_sts"
        assert page.startswith(f"validations/{suite}/brave-otter-42/") and page.endswith(".html")
        assert (docs / page).is_file()


def test_offline_site_names_assets_after_sources_and_batches_after_splits(offline_site):
    docs, summary = offline_site
    page = (docs / summary["batches"]["stsb/dev"]["docs_page"]).read_text(encoding="utf-8")
    assert "Data asset: stsb<" in page and "Data asset: None" not in page
    assert _spec_value(page, "batch_definition") == "dev"
    assert "brave-otter-42" in page and "__none__" not in page
    corp = (docs / summary["batches"]["corp"]["docs_page"]).read_text(encoding="utf-8")
    assert "Data asset: corp<" in corp and _spec_value(corp, "batch_definition") == "all"
    index = (docs / "index.html").read_text(encoding="utf-8")
    assert index.count("brave-otter-42") >= 3  # the index table data: one row per batch
    for b in summary["batches"].values():
        assert b["docs_page"] in index


def test_offline_site_pages_load_only_local_files_that_exist(offline_site):
    docs, summary = offline_site
    assert (docs / "static/vendor/jquery/dist/jquery.min.js").is_file()
    assert (docs / "static/vendor/bootstrap-table/dist/bootstrap-table.min.js").is_file()
    assert any((docs / "static/vendor/@fortawesome/fontawesome-free/webfonts").iterdir())
    for page in (docs / "index.html", docs / summary["batches"]["stsb/test"]["docs_page"],
                 docs / "expectations" / "simcse_sts.html"):
        missing, remote, n = _unresolved(page)
        assert n >= 15, page  # the stylesheets, scripts, favicon and logo
        assert not missing, f"{page}: {missing}"
        assert not remote, f"{page} loads from the network: {remote}"


def test_offline_site_needs_the_npm_assets_and_says_so_before_validating(sents, tmp_path, monkeypatch):
    monkeypatch.setenv(NODE_MODULES_ENV, str(tmp_path / "node_modules"))
    with pytest.raises(WebAssetsMissing, match=r"node_modules: folder not found.*npm ci --prefix web"):
        validate_batches([_batch("corpus", corpus_table(sents[:5]), "corp")], CFG, tmp_path / "docs")
    assert not (tmp_path / "docs").exists()


def test_run_name_defaults_to_the_pipeline_run(sents, monkeypatch):
    monkeypatch.setenv(RUN_NAME_ENV, "crimson-lemur")
    summary = validate_batches([_batch("corpus", corpus_table(sents[:5]), "corp")], CFG)
    assert summary["run_name"] == "crimson-lemur"
    assert "docs_page" not in summary["batches"]["corp"]  # no site, no page


def test_prepare_frame_derived_columns():
    df = prepare_frame("nli", pd.DataFrame({"anchor": ["A  b", None], "positive": ["a B", "x"], "negative": ["c", "d"],
                                            "file": ["f", "f"], "line": [1, 2]}))
    assert df["_identical"].tolist() == [True, False]
    assert df["_key"].tolist() == ["a b\na b\nc", "\nx\nd"]
    assert df["_tokens_anchor"].tolist() == [2, 0]


def test_split_without_expected_row_count_says_where_to_add_it(sents):
    table = sts_table([(sents[k], sents[k + 1], 1.0) for k in range(4)], split="dev")
    summary = validate_batches([_batch("sts", table, "sts/dev", score_min=0.0, score_max=5.0, row_count=-1)], CFG)
    (f,) = [f for f in summary["_failures"] if f["check"] == "row_counts"]
    assert "validate.sts.row_counts.expected.sts" in f["expected"] and f["observed"] == "4"


# -- domain kinds: text_pairs (training) and pairs (evaluation) ------------------------------


def _domain_table(data_root, fmt, paths, role, **options):
    from simcse_ops.config import SourceConfig
    from simcse_ops.readers import load_source

    return load_source("dom", SourceConfig(fmt, role, tuple(paths), options), data_root).table


def test_real_pubmedqa_pairs_and_mqp_pass(data_root):
    pq = ["domain/biomedical/pubmedqa_pqal/ori_pqal*.json"]
    text_pairs = _domain_table(data_root, "pubmedqa_pairs", pq, "domain", min_words=4)
    mqp = _domain_table(data_root, "mqp_csv", ["domain/biomedical/mqp/mqp.csv"], "eval-domain")
    summary = validate_batches([_batch("text_pairs", text_pairs, "pubmedqa_pairs"), _batch("pairs", mqp, "mqp")], CFG)
    assert summary["success"], summary["_failures"]
    checks = {e.meta["check"] for e in build_suite("text_pairs", CFG).expectations}
    assert checks == {"not_null", "not_empty", "row_count", "length_tokens", "nonprintable",
                      "identical_pairs", "unique"}


def test_bad_text_pairs_and_pairs_are_caught(sents):
    import pyarrow as pa

    from simcse_ops.schemas import PAIRS, TEXT_PAIRS

    pairs = [(sents[k], sents[k + 20]) for k in range(20)]
    pairs += [(sents[0].upper(), sents[20]), (sents[40], sents[40].lower()), (None, sents[41])]
    tp = pa.table({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs],
                   "doc": ["1"] * len(pairs), "file": ["f"] * len(pairs),
                   "line": list(range(1, len(pairs) + 1))}, schema=TEXT_PAIRS)
    rows = [("dev", "", sents[k], sents[k + 1], k % 2) for k in range(10)] + [("dev", "", sents[50], sents[51], 2)]
    pt = pa.table({c: [r[i] for r in rows] for i, c in enumerate(["split", "group", "sentence1", "sentence2", "label"])}
                  | {"file": ["f"] * len(rows), "line": list(range(1, len(rows) + 1))}, schema=PAIRS)
    summary = validate_batches([_batch("text_pairs", tp, "tp"), _batch("pairs", pt, "pt")], CFG)
    assert _failed(summary, "tp") == {"not_null": "critical", "unique": "critical", "identical_pairs": "warning",
                                      "length_tokens": "warning"}  # the null anchor has 0 tokens
    assert _failed(summary, "pt") == {"labels": "critical"}
    f = next(f for f in summary["_failures"] if f["check"] == "labels")
    assert f["column"] == "label" and "2" in f["observed"]


def test_text_pairs_params_section_is_typed():
    cfg = _build(ValidateConfig, {"text_pairs": {"length_tokens": {"max": 600}}}, "validate", Path("p.yaml"))
    assert cfg.text_pairs.length_tokens.max == 600
    with pytest.raises(ConfigError, match="negative"):
        _build(ValidateConfig, {"text_pairs": {"negative": {}}}, "validate", Path("p.yaml"))
