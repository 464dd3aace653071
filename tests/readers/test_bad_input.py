"""Bad input never passes silently: every malformed case raises an error that names the file,
the line, what was found and what was expected (or the params key to fix)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from simcse_ops.config import ConfigError, SourceConfig
from simcse_ops.files import DataError
from simcse_ops.readers import load_source, read_source


def src(fmt: str, *paths: str, role: str = "eval-sts", **options) -> SourceConfig:
    return SourceConfig(format=fmt, role=role, paths=tuple(paths), options=options)


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def semeval(root: Path, inputs: str | bytes, gold: str | bytes, subset: str = "toy") -> SourceConfig:
    write(root, f"STS12/STS.input.{subset}.txt", inputs)
    write(root, f"STS12/STS.gs.{subset}.txt", gold)
    return src("semeval_sts", f"STS12/STS.input.{subset}.txt")


def assert_names(err: Exception, file: str, line: int | None, *words: str) -> None:
    msg = str(err)
    assert file in msg, msg
    if line is not None:
        assert re.search(rf"{re.escape(file)}:{line}\b", msg), msg
    for w in words:
        assert w in msg, msg


GOOD_INPUT = "A cat sits.\tA cat is sitting.\nA dog runs.\tA man sings.\nRain falls.\tIt rains.\n"
GOOD_GOLD = "4.8\n0.4\n5.000\n"


def test_good_toy_semeval(tmp_path):
    table = read_source("toy", semeval(tmp_path, GOOD_INPUT, GOOD_GOLD), tmp_path)
    assert table.column("score").to_pylist() == [4.8, 0.4, 5.0]
    assert table.column("line").to_pylist() == [1, 2, 3]
    assert table.column("file").to_pylist() == ["STS12/STS.input.toy.txt"] * 3
    assert table.column("subset").to_pylist() == ["toy"] * 3


def test_blank_gold_keeps_alignment(tmp_path):
    table = read_source("toy", semeval(tmp_path, GOOD_INPUT, "4.8\n\n5\n"), tmp_path)
    assert table.column("line").to_pylist() == [1, 3]
    assert table.column("sentence1").to_pylist() == ["A cat sits.", "Rain falls."]
    assert table.column("score").to_pylist() == [4.8, 5.0]


def test_blank_gold_misalignment(tmp_path):
    """A gold file that lost a (blank) line no longer aligns with its input: error, not shift."""
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, GOOD_INPUT, "4.8\n5\n"), tmp_path)
    assert_names(e.value, "STS.gs.toy.txt", 3, "end of file after 2 lines", "one gold line per input line")


def test_semeval_wrong_field_count(tmp_path):
    bad = "A cat sits.\tA cat is sitting.\nA dog runs. A man sings.\nRain falls.\tIt rains.\n"
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, bad, GOOD_GOLD), tmp_path)
    assert_names(e.value, "STS.input.toy.txt", 2, "found 1 tab-separated field(s)", "expected 2 fields")


def test_semeval_inconsistent_field_count(tmp_path):
    bad = "A cat sits.\tA cat is sitting.\nA dog.\tA man.\tnote1\tnote2\nRain falls.\tIt rains.\n"
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, bad, GOOD_GOLD), tmp_path)
    assert_names(e.value, "STS.input.toy.txt", 2, "found 4 tab-separated field(s)", "expected 2 fields")


def test_semeval_unparsable_score(tmp_path):
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, GOOD_INPUT, "4.8\nfour\n5\n"), tmp_path)
    assert_names(e.value, "STS.gs.toy.txt", 2, "score 'four'", "a number in [0, 5]")


@pytest.mark.parametrize("score", ["5.2", "-0.1", "nan", "inf"])
def test_semeval_out_of_range_score(tmp_path, score):
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, GOOD_INPUT, f"4.8\n1\n{score}\n"), tmp_path)
    assert_names(e.value, "STS.gs.toy.txt", 3, f"score '{score}'", "[0, 5]")


def test_invalid_utf8(tmp_path):
    bad = b"A cat sits.\tA cat is sitting.\nA caf\xe9 opens.\tA shop opens.\nRain falls.\tIt rains.\n"
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, bad, GOOD_GOLD), tmp_path)
    assert_names(e.value, "STS.input.toy.txt", 2, "invalid UTF-8 byte b'\\xe9' at column 6", "UTF-8 text")


def test_empty_file(tmp_path):
    with pytest.raises(DataError) as e:
        read_source("toy", semeval(tmp_path, "", GOOD_GOLD), tmp_path)
    assert_names(e.value, "STS.input.toy.txt", 1, "found an empty file", "at least one record")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_source("toy", src("semeval_sts", "STS12/STS.input.absent.txt"), tmp_path)
    assert_names(e.value, "STS12/STS.input.absent.txt", None, "sources.toy.paths[0]")


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        read_source("wiki", src("wikiextractor", "corpus/AA/wiki_*", role="train-unsup"), tmp_path)
    assert_names(e.value, "corpus/AA/wiki_*", None, "sources.wiki.paths")


def test_missing_gold_file(tmp_path):
    write(tmp_path, "STS12/STS.input.toy.txt", GOOD_INPUT)
    with pytest.raises(FileNotFoundError) as e:
        read_source("toy", src("semeval_sts", "STS12/STS.input.toy.txt"), tmp_path)
    assert_names(e.value, "STS.gs.toy.txt", None, "sources.toy.paths")


def test_unknown_option(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_source("toy", src("lines", "x.txt", role="train-unsup", min_wrds=3), tmp_path)
    assert_names(e.value, "sources.toy.options", None, "'min_wrds'", "drop_unterminated_last_line")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_words": "4"}, "sources.wiki.options.min_words: expected an integer, got '4'"),
        ({"min_words": True}, "sources.wiki.options.min_words: expected an integer, got True"),
        ({"splitter": "punkt"}, "sources.wiki.options.splitter: expected 'rules' or 'pysbd', got 'punkt'"),
    ],
)
def test_option_types(tmp_path, options, message):
    write(tmp_path, "wiki_00", '<doc id="1" url="" title="A">\nA\n\nSome text here.\n</doc>\n')
    with pytest.raises(ConfigError) as e:
        read_source("wiki", src("wikiextractor", "wiki_00", role="train-unsup", **options), tmp_path)
    assert message in str(e.value)


def test_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match=r"sources.toy.format: unknown format 'tsv'"):
        read_source("toy", src("tsv", "x.txt"), tmp_path)


# -- STS-B, SICK ------------------------------------------------------------------------------

STSB_LINE = "main-captions\tMSRvid\t2012test\t0001\t{score}\tA girl is styling her hair.\tA girl brushes her hair.{extra}\n"


def test_stsb_nine_fields_and_quotes_ok(tmp_path):
    text = STSB_LINE.format(score="2.5", extra="") + STSB_LINE.format(score="3", extra="\tsrc1\tsrc2")
    text += 'main-news\tx\t2014\t0002\t1.0\tHe said "no.\tShe said "yes".\n'
    write(tmp_path, "sts-dev.csv", text)
    table = read_source("stsb", src("stsb_csv", "sts-dev.csv"), tmp_path)
    assert table.column("split").to_pylist() == ["dev"] * 3
    assert table.column("sentence1").to_pylist()[2] == 'He said "no.'


def test_stsb_wrong_field_count(tmp_path):
    text = STSB_LINE.format(score="2.5", extra="") + STSB_LINE.format(score="3", extra="\tsrc1")
    write(tmp_path, "sts-test.csv", text)
    with pytest.raises(DataError) as e:
        read_source("stsb", src("stsb_csv", "sts-test.csv"), tmp_path)
    assert_names(e.value, "sts-test.csv", 2, "found 8 tab-separated field(s)", "7 or 9 fields")


def test_stsb_out_of_range(tmp_path):
    write(tmp_path, "sts-train.csv", STSB_LINE.format(score="7.0", extra=""))
    with pytest.raises(DataError) as e:
        read_source("stsb", src("stsb_csv", "sts-train.csv"), tmp_path)
    assert_names(e.value, "sts-train.csv", 1, "score '7.0' out of range", "[0, 5]")


def test_stsb_unknown_split_name(tmp_path):
    write(tmp_path, "sts-other.csv", STSB_LINE.format(score="1", extra=""))
    with pytest.raises(DataError, match="sts-train.csv, sts-dev.csv or sts-test.csv"):
        read_source("stsb", src("stsb_csv", "sts-other.csv"), tmp_path)


SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"


def test_sick_score_below_one(tmp_path):
    write(tmp_path, "SICK_test_annotated.txt",
          SICK_HEADER + "1\tA man.\tA boy.\t3.2\tNEUTRAL\r\n2\tA dog.\tA cat.\t0.5\tNEUTRAL\r\n")
    with pytest.raises(DataError) as e:
        read_source("sick", src("sick_semeval", "SICK_test_annotated.txt"), tmp_path)
    assert_names(e.value, "SICK_test_annotated.txt", 3, "score '0.5' out of range", "[1, 5]")


def test_sick_wrong_field_count(tmp_path):
    write(tmp_path, "SICK_train.txt", SICK_HEADER + "1\tA man.\tA boy.\t3.2\r\n")
    with pytest.raises(DataError) as e:
        read_source("sick", src("sick_semeval", "SICK_train.txt"), tmp_path)
    assert_names(e.value, "SICK_train.txt", 2, "found 4 tab-separated field(s)", "5 fields")


def test_sick_full_bad_semeval_set(tmp_path):
    header = ("pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tentailment_AB\t"
              "entailment_BA\tsentence_A_original\tsentence_B_original\tsentence_A_dataset\t"
              "sentence_B_dataset\tSemEval_set")
    row = "1\tA man.\tA boy.\tNEUTRAL\t3.2\tA_neutral_B\tB_neutral_A\ta man\ta boy\tFLICKR\tFLICKR\t{}"
    write(tmp_path, "SICK.txt", "\r\n".join([header, row.format("TRAIN"), row.format("DEV")]))
    with pytest.raises(DataError) as e:
        read_source("sick_full", src("sick_full", "SICK.txt"), tmp_path)
    assert_names(e.value, "SICK.txt", 3, "SemEval_set 'DEV'", "TRAIN, TRIAL or TEST")


# -- corpora, NLI, bias -----------------------------------------------------------------------


def test_lines_unterminated_last_line(tmp_path):
    write(tmp_path, "w.txt", "First sentence.\n\nSecond one.\nThird, cut mid-sen")
    keep = read_source("w", src("lines", "w.txt", role="train-unsup"), tmp_path)
    assert keep.column("text").to_pylist() == ["First sentence.", "Second one.", "Third, cut mid-sen"]
    drop = read_source("w", src("lines", "w.txt", role="train-unsup", drop_unterminated_last_line=True), tmp_path)
    assert drop.column("text").to_pylist() == ["First sentence.", "Second one."]
    assert drop.column("line").to_pylist() == [1, 3]


def test_wikiextractor_unclosed_doc(tmp_path):
    write(tmp_path, "wiki_00", '<doc id="1" url="?curid=1" title="A">\nA\n\nSome text here.\n'
          '<doc id="2" url="?curid=2" title="B">\nB\n</doc>\n')
    with pytest.raises(DataError) as e:
        read_source("w", src("wikiextractor", "wiki_00", role="train-unsup"), tmp_path)
    assert_names(e.value, "wiki_00", 5, "a new <doc> inside document 1", "</doc>")


def test_wikiextractor_toy(tmp_path):
    write(tmp_path, "wiki_00",
          '<doc id="7" url="?curid=7" title="Ada &amp; Co">\nAda &amp; Co\n\n'
          "Ada &amp; Co is a firm. It was founded by Dr. Ada King in 1901.\nHistory.\n"
          "It grew.\n</doc>\n"
          '<doc id="8" url="?curid=8" title="Stub">\nStub\n\n</doc>\n')
    result = load_source("w", src("wikiextractor", "wiki_00", role="train-unsup", min_words=3), tmp_path)
    rows = result.table.to_pylist()
    assert [r["text"] for r in rows] == ["Ada & Co is a firm.", "It was founded by Dr. Ada King in 1901."]
    assert [(r["doc"], r["line"]) for r in rows] == [("7", 4), ("7", 4)]
    assert result.stats == {"docs": 2, "stub_docs": 1, "headings": 1, "short_sentences": 1}


def test_pubmedqa_invalid_json(tmp_path):
    write(tmp_path, "p.json", '{\n  "1": {"CONTEXTS": ["A b c d."], "LONG_ANSWER": "E f g h."},\n  "2": {\n}')
    with pytest.raises(DataError) as e:
        read_source("p", src("pubmedqa_json", "p.json", role="domain"), tmp_path)
    assert_names(e.value, "p.json", 4, "invalid JSON")


def test_pubmedqa_record_without_contexts(tmp_path):
    write(tmp_path, "p.json", '{\n "1": {"CONTEXTS": ["A b c d."], "LONG_ANSWER": "E f g h."},\n'
          ' "2": {"LONG_ANSWER": "I j k l."}\n}')
    with pytest.raises(DataError) as e:
        read_source("p", src("pubmedqa_json", "p.json", role="domain"), tmp_path)
    assert_names(e.value, "p.json", 3, "PMID 2: CONTEXTS = None", "a list of strings")


def _snli(label: str, s1: str = "A man sleeps.", s2: str = "A man rests.", cap: str = "c1") -> str:
    return json.dumps({"gold_label": label, "sentence1": s1, "sentence2": s2, "captionID": cap})


def test_snli_bad_label_and_json(tmp_path):
    lines = [_snli("entailment"), _snli("contradiction", s2="A man runs."), _snli("maybe")]
    path = write(tmp_path, "s.jsonl.gz", b"")
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError) as e:
        read_source("snli", src("snli_jsonl", "s.jsonl.gz", role="train-sup"), tmp_path)
    assert_names(e.value, "s.jsonl.gz", 3, "gold_label 'maybe'")
    write(tmp_path, "t.jsonl", _snli("entailment") + "\n{not json\n")
    with pytest.raises(DataError) as e:
        read_source("snli", src("snli_jsonl", "t.jsonl", role="train-sup"), tmp_path)
    assert_names(e.value, "t.jsonl", 2, "invalid JSON")


def test_snli_triples_toy(tmp_path):
    lines = [
        _snli("neutral", s2="N1"), _snli("contradiction", s2="C1"), _snli("-", s2="X"),
        _snli("entailment", s2="E1"), _snli("entailment", s2="E2"),
        _snli("entailment", s1="Only entailment.", s2="E3", cap="c2"),
    ]
    write(tmp_path, "s.jsonl", "\n".join(lines))
    result = load_source("snli", src("snli_jsonl", "s.jsonl", role="train-sup"), tmp_path)
    assert result.table.to_pylist() == [
        {"anchor": "A man sleeps.", "positive": "E1", "negative": "C1", "file": "s.jsonl", "line": 1}
    ]
    assert result.stats == {"no_gold": 1, "premises_without_triple": 1}


def test_nli_csv_header_and_fields(tmp_path):
    write(tmp_path, "a.csv", "sent0,sent1\r\nx,y\r\n")
    with pytest.raises(DataError) as e:
        read_source("n", src("nli_csv", "a.csv", role="train-sup"), tmp_path)
    assert_names(e.value, "a.csv", 1, "header 'sent0,sent1'", "sent0,sent1,hard_neg")
    write(tmp_path, "b.csv", 'sent0,sent1,hard_neg\r\n"a, b",c,d\r\n"multi\r\nline",e,f\r\ng,h\r\n')
    with pytest.raises(DataError) as e:
        read_source("n", src("nli_csv", "b.csv", role="train-sup"), tmp_path)
    assert_names(e.value, "b.csv", 5, "found 2 comma-separated field(s)", "3 fields")


def test_seat_not_one_object(tmp_path):
    write(tmp_path, "t/x.jsonl", '{"targ1": {"category": "A", "examples": ["a"]}}\n{"targ2": {}}\n')
    with pytest.raises(DataError) as e:
        read_source("seat", src("seat_json", "t/*.jsonl", role="bias"), tmp_path)
    assert_names(e.value, "x.jsonl", 2, "invalid JSON")


def test_seat_missing_examples(tmp_path):
    block = '{{"category": "{c}", "examples": {ex}}}'
    text = "{\n" + ",\n".join(
        f'"{k}": ' + block.format(c=k.upper(), ex='["a", "b"]' if k != "attr2" else "[]")
        for k in ("targ1", "targ2", "attr1", "attr2")
    ) + "\n}"
    write(tmp_path, "t/x.jsonl", text)
    with pytest.raises(DataError) as e:
        read_source("seat", src("seat_json", "t/*.jsonl", role="bias"), tmp_path)
    assert_names(e.value, "x.jsonl", 5, "attr2 =", "at least one example")


def test_crows_pairs_bad_direction(tmp_path):
    header = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"
    write(tmp_path, "c.csv", header + '0,"A, b.",C d.,stereo,age,"[[\'age\']]",a0,"[\'a1\']"\n'
          '1,E f.,G h.,stero,age,"[[\'age\']]",a1,"[\'a2\']"\n')
    with pytest.raises(DataError) as e:
        read_source("c", src("crows_pairs_csv", "c.csv", role="bias"), tmp_path)
    assert_names(e.value, "c.csv", 3, "stereo_antistereo 'stero'", "stereo or antistereo")


# -- the bad-record budget --------------------------------------------------------------------


def test_max_bad_fraction_counts_and_skips(tmp_path):
    inputs = "".join(f"Sentence {i}.\tOther {i}.\n" for i in range(10))
    gold = "".join(("x" if i == 4 else f"{i / 2}") + "\n" for i in range(10))
    cfg = semeval(tmp_path, inputs, gold)
    result = load_source("toy", cfg, tmp_path, max_bad_fraction=0.1)
    assert result.table.num_rows == 9
    assert result.n_bad == 1
    assert "STS.gs.toy.txt:5" in result.bad_examples[0]
    assert result.metrics()["bad_records"] == 1


def test_max_bad_fraction_exceeded(tmp_path):
    inputs = "".join(f"Sentence {i}.\tOther {i}.\n" for i in range(10))
    gold = "".join(("x" if i in (4, 7) else f"{i / 2}") + "\n" for i in range(10))
    with pytest.raises(DataError) as e:
        load_source("toy", semeval(tmp_path, inputs, gold), tmp_path, max_bad_fraction=0.1)
    assert_names(e.value, "STS.gs.toy.txt", 5, "2 malformed record(s) of 10", "ingest.max_bad_fraction")


def test_invalid_utf8_line_is_skippable(tmp_path):
    write(tmp_path, "w.txt", b"Good line one.\nBad \xff line.\nGood line three.\n")
    result = load_source("w", src("lines", "w.txt", role="train-unsup"), tmp_path, max_bad_fraction=0.5)
    assert result.table.column("line").to_pylist() == [1, 3]
    assert result.n_bad == 1 and "w.txt:2" in result.bad_examples[0]
