"""Corpus readers on the real files: wiki1m prefix, WikiExtractor dump, PubMedQA."""

from __future__ import annotations

import json

from simcse_ops.readers.corpus import clean_wiki_text, is_heading
from simcse_ops.schemas import CORPUS


def test_wiki1m_drops_the_truncated_last_line(real_source, data_root):
    result = real_source("wiki1m")
    assert result.table.schema.equals(CORPUS)
    assert result.table.num_rows == 11914
    assert result.stats["unterminated_last_line_dropped"] == 1
    rows = result.table.to_pylist()
    assert rows[0]["text"].startswith("YMCA in South Australia")
    assert rows[-1]["line"] == 11914


def test_enwiki_docs_stubs_headings(real_source):
    result = real_source("enwiki")
    assert result.stats["docs"] == 20486
    assert result.stats["stub_docs"] == 13234
    rows = result.table.to_pylist()
    texts = {r["text"] for r in rows}
    # titles, headings and tags never become sentences
    assert "Marcus Claudius Tacitus" not in texts and "Jarred Shaw" not in texts
    assert not texts & {"History.", "Early life.", "Professional career.", "Personal life."}
    assert not any("<doc" in t or "</doc>" in t or "&lt;ref" in t or "<ref" in t for t in texts)
    assert all(len(t.split()) >= 4 for t in texts)  # params: min_words 4
    # paragraphs are split: several sentences share a paragraph line
    assert len(rows) > len({(r["file"], r["line"]) for r in rows}) * 1.5
    # ~105k sentences by a naive split, before dropping short ones and headings
    assert 85_000 < len(rows) < 110_000
    assert rows[0] == {
        "text": "Jarred Shaw (born September 28, 1990) is an American professional basketball "
        "player for Trouville of the Liga Uruguaya de Básquetbol (LUB).",
        "doc": "56564559",
        "file": "corpus/enwiki_wikiextractor_AA/wiki_00",
        "line": 9,
    }


def test_pubmedqa_contexts_and_long_answer(real_source, data_root):
    # inductive: the training-side abstracts only; the held-out source has the dev and test ones
    result, heldout = real_source("pubmedqa"), real_source("pubmedqa_heldout")
    docs = {r["doc"] for r in result.table.to_pylist()}
    held = {r["doc"] for r in heldout.table.to_pylist()}
    assert len(docs | held) == 1000 and not docs & held
    test = set(json.loads((data_root / "domain/biomedical/pubmedqa_pqal/test_ground_truth.json").read_text()))
    assert test <= held and len(test) == 500
    rows = result.table.to_pylist() + heldout.table.to_pylist()
    assert 10_000 < len(rows) < 13_000  # ≈11.7k sentences before the min_words filter
    rows = sorted(rows, key=lambda r: (r["line"], r["doc"]))
    assert rows[0]["text"] == (
        "Programmed cell death (PCD) is the regulated death of cells within an organism."
    )
    assert rows[0]["doc"] == "21645374"
    # `line` points at the paragraph in the pretty-printed JSON
    lines = (data_root / rows[0]["file"]).read_text().split("\n")
    for r in rows[::500]:
        assert r["text"][:25] in lines[r["line"] - 1] or "\\u" in lines[r["line"] - 1]


def test_heading_rule():
    assert is_heading("History.", 6)
    assert is_heading("Early life and education.", 6)
    assert is_heading("1901: three-year-old season.", 6)
    assert not is_heading("He died on 27 August 1921.", 6)
    assert not is_heading("Davis is a breast cancer survivor.", 6)
    assert not is_heading("as well as for her outspoken antisemitism.", 6)
    assert not is_heading("The theme is of suffering and filial piety, told in eight short scenes.", 6)
    assert not is_heading("The school provides", 6)


def test_clean_wiki_text():
    assert clean_wiki_text("Harrow School Shanghai () is a school.") == "Harrow School Shanghai is a school."
    assert clean_wiki_text('Rain fell.&lt;ref name="a"&gt;x&lt;/ref&gt; More  fell.') == "Rain fell. More fell."
    assert clean_wiki_text("Forth &amp; Clyde") == "Forth & Clyde"
