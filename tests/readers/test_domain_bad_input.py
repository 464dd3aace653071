"""Bad input to the domain readers never passes silently: each case names the file and line,
what was found and what was expected (or the params key to fix)."""

from __future__ import annotations

import json

import pytest

from simcse_ops.config import ConfigError
from simcse_ops.files import DataError
from simcse_ops.readers import load_source, read_source
from tests.readers.test_bad_input import assert_names, src, write

MQP_OK = '1,"Is it safe, doctor?",Can I take it?,1\r\n1,"Is it safe, doctor?","Is ""it"" red?",0\r\n'


def test_mqp_good_quoting_and_crlf(tmp_path):
    write(tmp_path, "mqp.csv", MQP_OK)
    rows = read_source("mqp", src("mqp_csv", "mqp.csv", role="eval-domain"), tmp_path).to_pylist()
    assert [(r["sentence1"], r["sentence2"], r["label"], r["line"]) for r in rows] == [
        ("Is it safe, doctor?", "Can I take it?", 1, 1), ("Is it safe, doctor?", 'Is "it" red?', 0, 2)]
    assert rows[0]["split"] == rows[1]["split"] and rows[0]["group"] == "Is it safe, doctor?"


@pytest.mark.parametrize(
    ("bad_line", "words"),
    [
        ("2,Only three,fields\r\n", ["found 3 comma-separated field(s)", "4 fields: dr_id, question_1"]),
        ('2,"Q, one",Q two,1,extra\r\n', ["found 5 comma-separated field(s)"]),
        ("2,  ,Q two,1\r\n", ["found an empty question_1", "a non-empty question_1"]),
        ("2,Q one,,0\r\n", ["found an empty question_2"]),
        ("2,Q one,Q two,2\r\n", ["found label '2'", "0 (different) or 1 (similar)"]),
        ("2,Q one,Q two,yes\r\n", ["found label 'yes'"]),
    ],
)
def test_mqp_bad_record_names_file_and_line(tmp_path, bad_line, words):
    write(tmp_path, "d/mqp.csv", MQP_OK + bad_line)
    with pytest.raises(DataError) as e:
        read_source("mqp", src("mqp_csv", "d/mqp.csv", role="eval-domain"), tmp_path)
    assert_names(e.value, "d/mqp.csv", 3, *words)


def test_mqp_header_line_is_rejected(tmp_path):
    write(tmp_path, "mqp.csv", "dr_id,question_1,question_2,label\r\n" + MQP_OK)
    with pytest.raises(DataError) as e:
        read_source("mqp", src("mqp_csv", "mqp.csv", role="eval-domain"), tmp_path)
    assert_names(e.value, "mqp.csv", 1, "label 'label'")


def test_mqp_unclosed_quote(tmp_path):
    write(tmp_path, "mqp.csv", MQP_OK + '2,"Q one,Q two,1\r\n')
    with pytest.raises(DataError) as e:
        read_source("mqp", src("mqp_csv", "mqp.csv", role="eval-domain"), tmp_path)
    assert_names(e.value, "mqp.csv", 3, "malformed CSV")


def test_mqp_bad_records_counted_under_max_bad_fraction(tmp_path):
    write(tmp_path, "mqp.csv", MQP_OK * 5 + "2,Q one,Q two,7\r\n")
    result = load_source("mqp", src("mqp_csv", "mqp.csv", role="eval-domain"), tmp_path, max_bad_fraction=0.2)
    assert result.table.num_rows == 10 and result.n_bad == 1 and "mqp.csv:11" in result.bad_examples[0]


@pytest.mark.parametrize(("options", "message"), [
    ({"dev_fraction": 1.5}, "sources.mqp.options.dev_fraction: expected a number in [0, 1], got 1.5"),
    ({"seed": "0"}, "sources.mqp.options.seed: expected an integer, got '0'"),
])
def test_mqp_option_errors(tmp_path, options, message):
    write(tmp_path, "mqp.csv", MQP_OK)
    with pytest.raises(ConfigError) as e:
        read_source("mqp", src("mqp_csv", "mqp.csv", role="eval-domain", **options), tmp_path)
    assert message in str(e.value)


# -- pairs_labelled ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "text", "line", "words"),
    [
        ("p.tsv", "sentence1\tsentence2\nA.\tB.\n", 1, ["without label", "sentence1, sentence2, label"]),
        ("p.tsv", "sentence1\tsentence2\tlabel\nA.\tB.\t1\nA.\tB.\n", 3, ["found 2 tab-separated field(s)"]),
        ("p.tsv", "sentence1\tsentence2\tlabel\nA.\tB.\t1\nA.\tB.\t0.5\n", 3, ["label '0.5'", "0 (different) or 1"]),
        ("p.tsv", "sentence1\tsentence2\tlabel\tsplit\nA.\tB.\t1\t\n", 2, ["an empty split"]),
        ("p.csv", 'sentence1,sentence2,label\n"A, a.",B.,1\n,B.,0\n', 3, ["an empty sentence1"]),
        ("p.jsonl", '{"sentence1": "A.", "sentence2": "B.", "label": 1}\n{"sentence1": "A."', 2, ["invalid JSON"]),
        ("p.jsonl", '{"sentence1": "A.", "sentence2": "B.", "label": 1}\n{"sentence1": "A.", "sentence2": "B."}\n', 2,
         ["no key 'label'"]),
        ("p.jsonl", '{"sentence1": "A.", "sentence2": "B.", "label": true}\n', 1, ["label True"]),
        ("p.jsonl", '{"sentence1": ["A."], "sentence2": "B.", "label": 1}\n', 1, ["sentence1 = ['A.']"]),
        ("p.jsonl", '[1, 2]\n', 1, ["a JSON list", "a JSON object"]),
    ],
)
def test_pairs_labelled_bad_input(tmp_path, name, text, line, words):
    write(tmp_path, f"u/{name}", text)
    with pytest.raises(DataError) as e:
        read_source("u", src("pairs_labelled", f"u/{name}", role="eval-domain"), tmp_path)
    assert_names(e.value, f"u/{name}", line, *words)


def test_pairs_labelled_unknown_suffix(tmp_path):
    write(tmp_path, "p.txt", "sentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError) as e:
        read_source("u", src("pairs_labelled", "p.txt", role="eval-domain"), tmp_path)
    assert_names(e.value, "p.txt", None, ".tsv, .csv or .jsonl", "sources.u.paths")


# -- pairs_scored --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "text", "line", "words"),
    [
        ("g.tsv", "sentence1\tsentence2\nA.\tB.\n", 1, ["without score", "sentence1, sentence2, score"]),
        ("g.tsv", "sentence1\tsentence2\tscore\nA.\tB.\t2\nA.\tB.\thigh\n", 3, ["score 'high'", "a number in [0, 4]"]),
        ("g.tsv", "sentence1\tsentence2\tscore\nA.\tB.\t4.5\n", 2, ["score '4.5'", "a number in [0, 4]"]),
        ("g.tsv", "sentence1\tsentence2\tscore\nA.\tB.\tnan\n", 2, ["score 'nan'"]),
        ("g.jsonl", '{"sentence1": "A.", "sentence2": "B."}\n', 1, ["no key 'score'"]),
        ("g.jsonl", '{"sentence1": "A.", "sentence2": "B.", "score": true}\n', 1, ["score True"]),
    ],
)
def test_pairs_scored_bad_input(tmp_path, name, text, line, words):
    write(tmp_path, f"u/{name}", text)
    with pytest.raises(DataError) as e:
        read_source("u", src("pairs_scored", f"u/{name}", role="eval-domain", score_range=[0, 4]), tmp_path)
    assert_names(e.value, f"u/{name}", line, *words)


# -- BEIR ----------------------------------------------------------------------------------------

CORPUS = '{"_id": "d1", "title": "T", "text": "Doc one."}\n{"_id": "d2", "text": "Doc two."}\n'
QUERIES = '{"_id": "q1", "text": "One?"}\n{"_id": "q2", "text": "Two?"}\n'
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"


def beir(root, corpus=CORPUS, queries=QUERIES, qrels=QRELS):
    write(root, "b/corpus.jsonl", corpus)
    write(root, "b/queries.jsonl", queries)
    write(root, "b/qrels/test.tsv", qrels)
    return src("beir", "b", role="eval-domain")


@pytest.mark.parametrize(
    ("kw", "file", "line", "words"),
    [
        ({"qrels": QRELS + "q9\td1\t1\n"}, "b/qrels/test.tsv", 3, ["query-id 'q9'", "b/queries.jsonl", "the _id of a query"]),
        ({"qrels": QRELS + "q2\td7\t1\n"}, "b/qrels/test.tsv", 3, ["corpus-id 'd7'", "the _id of a corpus document"]),
        ({"qrels": QRELS + "q2\td2\thigh\n"}, "b/qrels/test.tsv", 3, ["score 'high'", "an integer relevance"]),
        ({"qrels": QRELS + "q2\td2\n"}, "b/qrels/test.tsv", 3, ["2 tab-separated field(s)"]),
        ({"qrels": QRELS + "q1\td1\t2\n"}, "b/qrels/test.tsv", 3, ["again (first on line 2)"]),
        ({"qrels": "qid\tdid\tscore\nq1\td1\t1\n"}, "b/qrels/test.tsv", 1, ["header", "query-id"]),
        ({"corpus": CORPUS + '{"_id": "d1", "text": "Again."}\n'}, "b/corpus.jsonl", 3, ["_id 'd1' again (first on line 1)"]),
        ({"corpus": CORPUS + '{"_id": "d3", "title": "", "text": ""}\n'}, "b/corpus.jsonl", 3, ["empty title and text"]),
        ({"queries": QUERIES + '{"_id": "q3"}\n'}, "b/queries.jsonl", 3, ["no key 'text'"]),
        ({"queries": QUERIES + '{"_id": "q3", "text": " "}\n'}, "b/queries.jsonl", 3, ["an empty text"]),
    ],
)
def test_beir_bad_input(tmp_path, kw, file, line, words):
    with pytest.raises(DataError) as e:
        read_source("toy", beir(tmp_path, **kw), tmp_path)
    assert_names(e.value, file, line, *words)


def test_beir_folder_without_corpus(tmp_path):
    write(tmp_path, "b/queries.jsonl", QUERIES)
    write(tmp_path, "b/qrels/test.tsv", QRELS)
    with pytest.raises(FileNotFoundError) as e:
        read_source("toy", src("beir", "b", role="eval-domain"), tmp_path)
    assert_names(e.value, "b/corpus.jsonl", None, "sources.toy.paths")


def test_folders_only_for_beir(tmp_path):
    write(tmp_path, "folder/x.txt", "A line.\n")
    with pytest.raises(FileNotFoundError) as e:
        read_source("c", src("lines", "folder", role="train-unsup"), tmp_path)
    assert_names(e.value, "folder", None, "sources.c.paths[0]")


# -- PubMedQA ------------------------------------------------------------------------------------


def pubmedqa(root, records: dict, test=("1",)):
    write(root, "pq/ori_pqal.json", json.dumps(records, indent=4))
    write(root, "pq/test.json", json.dumps({p: "yes" for p in test}, indent=4))


def record(q="Does it work?", contexts=("It was tested. It worked well here.",), answer="It works."):
    return {"QUESTION": q, "CONTEXTS": list(contexts), "LABELS": ["X"], "LONG_ANSWER": answer}


def test_pubmedqa_retrieval_missing_question(tmp_path):
    pubmedqa(tmp_path, {"1": record(), "2": {k: v for k, v in record().items() if k != "QUESTION"}})
    with pytest.raises(DataError) as e:
        read_source("r", src("pubmedqa_retrieval", "pq/ori_pqal.json", role="eval-domain",
                             test_pmids="pq/test.json"), tmp_path)
    assert_names(e.value, "pq/ori_pqal.json", 12, "PMID 2: QUESTION = None", "a non-empty string")


def test_pubmedqa_retrieval_empty_target(tmp_path):
    pubmedqa(tmp_path, {"1": record(), "2": record(answer="  ")})
    with pytest.raises(DataError) as e:
        read_source("r", src("pubmedqa_retrieval", "pq/ori_pqal.json", role="eval-domain",
                             test_pmids="pq/test.json"), tmp_path)
    assert_names(e.value, "pq/ori_pqal.json", 20, "an empty LONG_ANSWER")  # record 2's


def test_pubmedqa_same_pmid_in_two_files(tmp_path):
    pubmedqa(tmp_path, {"1": record()})
    write(tmp_path, "pq/ori_pqal_2.json", json.dumps({"1": record()}, indent=4))
    with pytest.raises(DataError) as e:
        read_source("r", src("pubmedqa_retrieval", "pq/ori_pqal*.json", role="eval-domain",
                             test_pmids="pq/test.json"), tmp_path)
    assert_names(e.value, "pq/ori_pqal_2.json", 2, "PMID 1 again", "each PMID once")


def test_pubmedqa_small_file_splits(tmp_path):
    pubmedqa(tmp_path, {"1": record(), "2": record(q="Is it?"), "3": record(q="Was it?")})
    rows = read_source("r", src("pubmedqa_retrieval", "pq/ori_pqal.json", role="eval-domain",
                                test_pmids="pq/test.json", dev_fraction=1.0), tmp_path).to_pylist()
    assert [(r["record"], r["split"], r["id"] or r["query_id"]) for r in rows] == [
        ("doc", "", "1"), ("doc", "", "2"), ("doc", "", "3"),
        ("query", "test", "1"), ("query", "dev", "2"), ("query", "dev", "3"),
        ("qrel", "test", "1"), ("qrel", "dev", "2"), ("qrel", "dev", "3")]
    assert rows[3]["line"] == 3 and rows[0]["line"] == 10  # QUESTION's and LONG_ANSWER's lines
    pairs = read_source("p", src("pubmedqa_pairs", "pq/ori_pqal.json", role="domain", test_pmids="pq/test.json",
                                 dev_fraction=0.0, pairs=["sentence_abstract"], min_words=3), tmp_path).to_pylist()
    assert [(p["doc"], p["anchor"], p["positive"]) for p in pairs] == [
        ("2", "It was tested.", "It worked well here. It works."),
        ("2", "It worked well here.", "It was tested. It works."),
        ("3", "It was tested.", "It worked well here. It works."),
        ("3", "It worked well here.", "It was tested. It works.")]


@pytest.mark.parametrize(("fmt", "options", "message"), [
    ("pubmedqa_json", {"splits": ["valid"]},
     "sources.s.options.splits: expected a list, each item one of 'train', 'dev', 'test' or null, got ['valid']"),
    ("pubmedqa_json", {"splits": "train"}, "sources.s.options.splits: expected a list"),
    ("pubmedqa_json", {"splits": []}, "sources.s.options.splits: expected at least one of train, dev, test"),
    ("pubmedqa_pairs", {"pairs": ["question_title"]}, "sources.s.options.pairs: expected a list, each item one of"),
    ("pubmedqa_pairs", {"pairs": []}, "sources.s.options.pairs: expected at least one of"),
    ("pubmedqa_retrieval", {"target": "title"}, "sources.s.options.target: expected 'conclusion' or 'abstract'"),
    ("pubmedqa_retrieval", {"dev_fraction": -0.1}, "sources.s.options.dev_fraction: expected a number in [0, 1]"),
])
def test_pubmedqa_option_errors(tmp_path, fmt, options, message):
    pubmedqa(tmp_path, {"1": record()})
    with pytest.raises(ConfigError) as e:
        read_source("s", src(fmt, "pq/ori_pqal.json", role="domain", test_pmids="pq/test.json", **options), tmp_path)
    assert message in str(e.value)


def test_pubmedqa_test_pmids_file_missing_or_bad(tmp_path):
    pubmedqa(tmp_path, {"1": record()})
    with pytest.raises(FileNotFoundError) as e:
        read_source("s", src("pubmedqa_json", "pq/ori_pqal.json", role="domain", splits=["train"],
                             test_pmids="pq/absent.json"), tmp_path)
    assert_names(e.value, "pq/absent.json", None, "sources.s.options.test_pmids")
    write(tmp_path, "pq/bad.json", '{"1": "yes",\n')
    with pytest.raises(DataError) as e:
        read_source("s", src("pubmedqa_json", "pq/ori_pqal.json", role="domain", splits=["train"],
                             test_pmids="pq/bad.json"), tmp_path)
    assert_names(e.value, "pq/bad.json", 2, "invalid JSON")
    # without `splits` the corpus reader never needs the test file (the behaviour before splits)
    assert read_source("s", src("pubmedqa_json", "pq/ori_pqal.json", role="domain",
                                test_pmids="pq/absent.json"), tmp_path).num_rows == 3
