"""Domain readers on the real files (MQP, PubMedQA PQA-L) and on a tiny BEIR folder."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from simcse_ops.config import SourceConfig
from simcse_ops.readers import load_source, read_source
from simcse_ops.readers.corpus import pubmedqa_split
from simcse_ops.schemas import PAIRS, RETRIEVAL, TEXT_PAIRS

MQP = "domain/biomedical/mqp/mqp.csv"
PQ = "domain/biomedical/pubmedqa_pqal/ori_pqal*.json"
PQ_TEST = "domain/biomedical/pubmedqa_pqal/test_ground_truth.json"


def src(fmt: str, *paths: str, role: str = "eval-domain", **options) -> SourceConfig:
    return SourceConfig(format=fmt, role=role, paths=tuple(paths), options=options)


@pytest.fixture(scope="module")
def read_real(data_root):
    cache = {}

    def read(key: str, cfg: SourceConfig):
        if key not in cache:
            cache[key] = load_source(key, cfg, data_root)
        return cache[key]

    return read


@pytest.fixture(scope="module")
def test_pmids(data_root):
    return set(json.loads((data_root / PQ_TEST).read_text()))


# -- MQP ---------------------------------------------------------------------------------------


def test_mqp_rows_labels_and_group_split(read_real):
    result = read_real("mqp", src("mqp_csv", MQP))
    table = result.table
    assert table.schema.equals(PAIRS)
    rows = table.to_pylist()
    assert len(rows) == 3048
    assert Counter(r["label"] for r in rows) == {0: 1524, 1: 1524}
    splits = Counter(r["split"] for r in rows)
    assert set(splits) == {"dev", "test"} and 1300 < splits["dev"] < 1750
    sides = defaultdict(set)
    for r in rows:
        sides[r["group"]].add(r["split"])
        assert r["group"] == r["sentence1"]
    assert len(sides) == 1524
    assert all(len(s) == 1 for s in sides.values())  # no question_1 on both sides
    assert rows[0]["line"] == 1 and rows[-1]["line"] == 3048 and rows[0]["file"] == MQP
    assert rows[0]["sentence1"].startswith("After how many hour from drinking an antibiotic")
    assert result.metrics()["labels"] == {"0": 1524, "1": 1524}


def test_mqp_split_is_seeded_and_deterministic(data_root, read_real):
    a = read_real("mqp", src("mqp_csv", MQP)).table.column("split").to_pylist()
    again = read_source("mqp", src("mqp_csv", MQP), data_root).column("split").to_pylist()
    other = read_source("mqp", src("mqp_csv", MQP, seed=1), data_root).column("split").to_pylist()
    all_dev = read_source("mqp", src("mqp_csv", MQP, dev_fraction=1.0), data_root).column("split").to_pylist()
    assert a == again and a != other
    assert set(all_dev) == {"dev"}


# -- PubMedQA ------------------------------------------------------------------------------------


def test_pubmedqa_split_rule():
    test = {"1", "2"}
    assert pubmedqa_split("1", test, 0.5, 0) == "test"
    assert pubmedqa_split("1", test, 1.0, 0) == "test"  # the official test split always wins
    assert pubmedqa_split("3", test, 1.0, 0) == "dev" and pubmedqa_split("3", test, 0.0, 0) == "train"
    draws = Counter(pubmedqa_split(str(k), test, 0.3, 7) for k in range(10, 4010))
    assert 1000 < draws["dev"] < 1400 and draws["test"] == 0


@pytest.mark.parametrize("target", ["conclusion", "abstract"])
def test_pubmedqa_retrieval_on_real_file(read_real, test_pmids, data_root, target):
    result = read_real(f"ret_{target}", src("pubmedqa_retrieval", PQ, target=target))
    table = result.table
    assert table.schema.equals(RETRIEVAL)
    rows = table.to_pylist()
    docs = [r for r in rows if r["record"] == "doc"]
    queries = [r for r in rows if r["record"] == "query"]
    qrels = [r for r in rows if r["record"] == "qrel"]
    assert len(docs) == 1000 and {d["split"] for d in docs} == {""} and {d["title"] for d in docs} == {""}
    assert all(d["text"] and d["query_id"] is None and d["relevance"] is None for d in docs)
    split_of = {q["id"]: q["split"] for q in queries}
    assert len(split_of) == len(queries)  # a PMID is a query in one split only
    assert {p for p, s in split_of.items() if s == "test"} == test_pmids  # 500 official test PMIDs
    assert set(split_of.values()) == {"dev", "test"}  # no train queries
    n_dev = sum(s == "dev" for s in split_of.values())
    assert result.stats["docs_train"] + n_dev == 500 and 150 < n_dev < 350
    assert all(pubmedqa_split(p, test_pmids, 0.5, 0) == s for p, s in split_of.items())
    assert [(q["query_id"], q["doc_id"], q["relevance"], q["split"]) for q in qrels] == \
        [(q["id"], q["id"], 1, q["split"]) for q in queries]
    data = json.loads((data_root / docs[0]["file"]).read_text())
    first = docs[0]["id"]
    expected = data[first]["LONG_ANSWER"] if target == "conclusion" else " ".join(data[first]["CONTEXTS"])
    assert docs[0]["text"] == " ".join(expected.split())
    q = queries[0]
    assert q["text"] == data[q["id"]]["QUESTION"]
    lines = (data_root / q["file"]).read_text().split("\n")
    assert q["text"][:30] in lines[q["line"] - 1]


def test_pubmedqa_corpus_inductive_excludes_dev_and_test(read_real, test_pmids):
    inductive = read_real("ind", src("pubmedqa_json", PQ, role="domain", min_words=4, splits=["train"]))
    retrieval = read_real("ret_conclusion", src("pubmedqa_retrieval", PQ, target="conclusion")).table.to_pylist()
    eval_pmids = {r["id"] for r in retrieval if r["record"] == "query"}
    docs = set(inductive.table.column("doc").to_pylist())
    assert docs and not docs & eval_pmids and not docs & test_pmids
    assert len(docs) == inductive.stats["docs"] == inductive.stats["docs_train"]
    assert inductive.stats["docs_skipped_test"] == 500
    assert inductive.stats["docs_train"] + inductive.stats["docs_skipped_dev"] == 500
    # transductive (splits null, the behaviour before the option existed) reads every PMID
    full = read_real("all", src("pubmedqa_json", PQ, role="domain", min_words=4, splits=None)).table
    assert len(set(full.column("doc").to_pylist())) == 1000 and full.num_rows == 11365
    both = read_real("both", src("pubmedqa_json", PQ, role="domain", min_words=4, splits=["train", "dev", "test"]))
    assert both.table.equals(full)


def test_pubmedqa_pairs_on_real_file(read_real, test_pmids, data_root):
    result = read_real("pairs", src("pubmedqa_pairs", PQ, role="domain"))
    table = result.table
    assert table.schema.equals(TEXT_PAIRS)
    rows = table.to_pylist()
    docs = {r["doc"] for r in rows}
    assert len(docs) == result.stats["docs_train"] and not docs & test_pmids
    assert all(pubmedqa_split(d, test_pmids, 0.5, 0) == "train" for d in docs)
    n = result.stats["docs_train"]
    assert result.stats["pairs_question_conclusion"] == n == result.stats["pairs_question_abstract"]
    assert result.stats["pairs_sentence_abstract"] > 5 * n
    data = json.loads((data_root / rows[0]["file"]).read_text())
    rec = data[rows[0]["doc"]]
    assert rows[0]["anchor"] == rec["QUESTION"] and rows[0]["positive"] == " ".join(rec["LONG_ANSWER"].split())
    assert rows[1]["positive"] == " ".join(" ".join(rec["CONTEXTS"]).split())
    sent = rows[2]
    assert sent["anchor"] in rec["CONTEXTS"][0] and sent["anchor"] not in sent["positive"]
    assert len(sent["anchor"].split()) >= 4


def test_pubmedqa_pairs_options(data_root):
    only = read_source("p", src("pubmedqa_pairs", PQ, role="domain", pairs=["question_conclusion"],
                                splits=["dev"]), data_root).to_pylist()
    test_pmids = set(json.loads((data_root / PQ_TEST).read_text()))
    assert {pubmedqa_split(r["doc"], test_pmids, 0.5, 0) for r in only} == {"dev"}
    assert len(only) == len({r["doc"] for r in only})  # one pair per PMID


# -- generic labelled pairs and BEIR on small files ----------------------------------------------


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_pairs_labelled_three_formats(tmp_path):
    write(tmp_path, "p.tsv", "sentence1\tsentence2\tlabel\tgroup\nA cat.\tA feline.\t1\tg1\nA dog.\tA car.\t0\tg1\n")
    write(tmp_path, "p.csv", 'label,sentence1,sentence2,split\n1,"Hi, there.","Hello, ""you"".",dev\n')
    write(tmp_path, "p.jsonl", '{"sentence1": "X is.", "sentence2": "Y is.", "label": 0}\n\n'
                               '{"sentence1": "Z.", "sentence2": "W.", "label": "1", "split": "train"}\n')
    rows = read_source("u", src("pairs_labelled", "p.tsv", "p.csv", "p.jsonl", split="test"), tmp_path).to_pylist()
    assert [(r["split"], r["group"], r["label"], r["file"], r["line"]) for r in rows] == [
        ("test", "g1", 1, "p.tsv", 2), ("test", "g1", 0, "p.tsv", 3), ("dev", "", 1, "p.csv", 2),
        ("test", "", 0, "p.jsonl", 1), ("train", "", 1, "p.jsonl", 3)]
    assert rows[2]["sentence1"] == "Hi, there." and rows[2]["sentence2"] == 'Hello, "you".'


def test_pairs_scored_three_formats(tmp_path):
    write(tmp_path, "g.tsv", "sentence1\tsentence2\tscore\nA cat sits.\tA feline sits.\t3.6\nA dog.\tA car.\t0\n")
    write(tmp_path, "g.csv", 'score,sentence1,sentence2,split\n4,"Hi, there.","Hello, ""you"".",test\n')
    write(tmp_path, "g.jsonl", '{"sentence1": "X is.", "sentence2": "Y is.", "score": 1.5}\n')
    rows = read_source("u", src("pairs_scored", "g.tsv", "g.csv", "g.jsonl", split="dev", score_range=[0, 4]),
                       tmp_path).to_pylist()
    assert [(r["split"], r["score"], r["subset"], r["file"], r["line"]) for r in rows] == [
        ("dev", 3.6, "g", "g.tsv", 2), ("dev", 0.0, "g", "g.tsv", 3), ("test", 4.0, "g", "g.csv", 2),
        ("dev", 1.5, "g", "g.jsonl", 1)]
    assert rows[2]["sentence2"] == 'Hello, "you".'


def test_biosses_half_is_read_whole(read_real, params):
    """The visible BIOSSES half: 50 pairs, all `dev` (its held-out half is the test), scores 0..4."""
    r = read_real("biosses", params.sources["biosses"])
    rows = r.table.to_pylist()
    assert r.kind == "sts" and len(rows) == 50 and {x["split"] for x in rows} == {"dev"}
    assert all(0.0 <= x["score"] <= 4.0 for x in rows) and len({x["score"] for x in rows}) > 10
    assert rows[0]["file"] == "domain/biomedical/biosses_dev/biosses_dev.tsv" and rows[0]["line"] == 2


def beir(root, qrels_test="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"):
    write(root, "beir/toy/corpus.jsonl", '{"_id": "d1", "title": "T1", "text": "Doc one."}\n'
                                         '{"_id": "d2", "title": "", "text": "Doc two."}\n'
                                         '{"_id": "d3", "text": "Doc three."}\n')
    write(root, "beir/toy/queries.jsonl", '{"_id": "q1", "text": "Query one?"}\n'
                                          '{"_id": "q2", "text": "Query two?"}\n'
                                          '{"_id": "q3", "text": "Query three?"}\n'
                                          '{"_id": "q4", "text": "Unjudged?"}\n')
    write(root, "beir/toy/qrels/test.tsv", qrels_test)
    write(root, "beir/toy/qrels/dev.tsv", "query-id\tcorpus-id\tscore\nq3\td3\t1\n")


@pytest.mark.parametrize("paths", [("beir/toy",), ("beir/toy/*.jsonl", "beir/toy/qrels/*.tsv")])
def test_beir_folder_or_files(tmp_path, paths):
    beir(tmp_path)
    result = load_source("toy", src("beir", *paths), tmp_path)
    rows = result.table.to_pylist()
    assert [(r["record"], r["split"], r["id"]) for r in rows if r["record"] != "qrel"] == [
        ("doc", "", "d1"), ("doc", "", "d2"), ("doc", "", "d3"),
        ("query", "test", "q1"), ("query", "test", "q2"), ("query", "dev", "q3")]
    qrels = [(r["split"], r["query_id"], r["doc_id"], r["relevance"], r["line"]) for r in rows if r["record"] == "qrel"]
    assert sorted(qrels) == [("dev", "q3", "d3", 1, 2), ("test", "q1", "d1", 1, 2), ("test", "q2", "d2", 2, 3)]
    assert rows[0]["title"] == "T1" and rows[0]["file"] == "beir/toy/corpus.jsonl"
    assert result.stats["queries_without_qrels"] == 1
