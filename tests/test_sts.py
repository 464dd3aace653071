"""STS scoring on hand-computed toy cases, and the user pairs-file reader."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from simcse_ops.files import DataError
from simcse_ops.sts import (
    cosine_rows,
    evaluate_sts,
    pearson100,
    read_pairs_file,
    spearman100,
    sts_spearman,
)


def test_cosine_rows_hand_computed():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    # orthogonal -> 0; parallel -> 1; zero vector -> defined as 0
    np.testing.assert_allclose(cosine_rows(a, b), [0.0, 1.0, 0.0], atol=1e-12)
    # 45 degrees: cos = 1/sqrt(2)
    assert cosine_rows(np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]))[0] == pytest.approx(1 / math.sqrt(2))


def test_spearman_hand_computed():
    # ranks pred 1 2 3 4, gold 1 3 2 4: d^2 = 0+1+1+0 = 2; rho = 1 - 6*2/(4*15) = 0.8
    assert spearman100([0.1, 0.2, 0.3, 0.4], [1, 3, 2, 4]) == pytest.approx(80.0)
    # perfectly reversed
    assert spearman100([1, 2, 3], [3, 2, 1]) == pytest.approx(-100.0)
    # ties take average ranks: pred ranks 1.5 1.5 3, gold 1 2 3 -> Pearson of ranks = sqrt(3)/2
    assert spearman100([5, 5, 9], [1, 2, 3]) == pytest.approx(100 * math.sqrt(3) / 2)
    # constant input has no rank correlation
    assert math.isnan(spearman100([1, 1, 1], [1, 2, 3]))


def test_pearson_hand_computed():
    # y = 2x + 1 -> r = 1
    assert pearson100([1, 2, 3], [3, 5, 7]) == pytest.approx(100.0)


def _embedder(vectors: dict[str, list[float]], calls: list[list[str]]):
    def embed(sentences: list[str]) -> np.ndarray:
        calls.append(list(sentences))
        return np.array([vectors[s] for s in sentences], dtype=np.float32)

    return embed


def _angle_vectors(names_angles: dict[str, float]) -> dict[str, list[float]]:
    return {n: [math.cos(t), math.sin(t)] for n, t in names_angles.items()}


def test_all_setting_is_one_spearman_over_concatenated_subsets():
    # Each pair (x, "o") has cosine cos(angle(x)): the predicted order follows the angle.
    vec = _angle_vectors({"o": 0.0, "a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})
    # subset A: gold agrees with prediction; subset B: gold agrees too, but on a shifted scale
    # so that concatenated, the gold order is (b-side high) inconsistent with predictions.
    pairs = pd.DataFrame(
        {
            "subset": ["A", "A", "B", "B"],
            "sentence1": ["a", "b", "c", "d"],
            "sentence2": ["o", "o", "o", "o"],
            "score": [2.0, 1.0, 4.0, 3.0],
        }
    )
    calls: list[list[str]] = []
    result = evaluate_sts(_embedder(vec, calls), {"toy": pairs})
    # predictions (cosines) decrease a > b > c > d -> ranks 4 3 2 1; gold ranks 2 1 4 3
    # d^2 = 4 + 4 + 4 + 4 = 16; rho = 1 - 6*16/(4*15) = -0.6
    assert result["toy"] == pytest.approx(-60.0)
    subsets = result["details"]["toy"]["subsets"]
    assert subsets["A"]["spearman"] == pytest.approx(100.0)
    assert subsets["B"]["spearman"] == pytest.approx(100.0)
    assert result["details"]["toy"]["subset_wmean"] == pytest.approx(100.0)
    assert result["avg"] == pytest.approx(-60.0)


def test_each_distinct_sentence_encoded_once_across_tasks():
    vec = _angle_vectors({"o": 0.0, "a": 0.1, "b": 0.5, "c": 0.9})
    t1 = pd.DataFrame({"subset": "x", "sentence1": ["a", "b", "c"], "sentence2": ["o", "o", "o"], "score": [3, 2, 1]})
    t2 = pd.DataFrame({"subset": "y", "sentence1": ["o", "a", "b"], "sentence2": ["c", "c", "c"], "score": [1, 2, 3]})
    calls: list[list[str]] = []
    result = evaluate_sts(_embedder(vec, calls), {"t1": t1, "t2": t2})
    assert len(calls) == 1
    assert sorted(calls[0]) == ["a", "b", "c", "o"]
    assert result["n_sentences_encoded"] == 4
    assert result["t1"] == pytest.approx(100.0)
    # t2: cos(o,c)=cos .9, cos(a,c)=cos .8, cos(b,c)=cos .4 -> increasing, gold increasing
    assert result["t2"] == pytest.approx(100.0)


def test_avg_is_mean_of_two_decimal_task_figures():
    vec = _angle_vectors({"o": 0.0, "a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})
    base = {"subset": "s", "sentence1": ["a", "b", "c", "d"], "sentence2": ["o"] * 4}
    t1 = pd.DataFrame({**base, "score": [4, 3, 2, 1]})  # 100
    t2 = pd.DataFrame({**base, "score": [1, 3, 2, 4]})  # ranks pred 4 3 2 1 vs gold 1 3 2 4: d^2=9+0+0+9 -> 1-6*18/60 = -0.8
    result = evaluate_sts(_embedder(vec, []), {"t1": t1, "t2": t2})
    assert result["t1"] == 100.0 and result["t2"] == pytest.approx(-80.0)
    assert result["avg"] == pytest.approx(10.0)


def test_sts_spearman_for_dev_evaluation():
    vec = _angle_vectors({"o": 0.0, "a": 0.1, "b": 0.2, "c": 0.3})
    assert sts_spearman(_embedder(vec, []), ["a", "b", "c"], ["o", "o", "o"], [3, 2, 1]) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# pairs files


def test_read_pairs_tsv_csv_jsonl(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text('sentence1\tsentence2\tscore\nHe said "hi".\tHe greeted.\t4\nA\tB\t0.5\n', encoding="utf-8")
    csvf = tmp_path / "p.csv"
    csvf.write_text('sentence1,sentence2,score\n"He said ""hi"", then left.",He greeted.,4\nA,B,0.5\n', encoding="utf-8")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"sentence1": "A", "sentence2": "B", "score": 1}\n\n{"sentence1": "C", "sentence2": "D", "score": "2.5"}\n')
    t = read_pairs_file(tsv)
    assert t["sentence1"].tolist() == ['He said "hi".', "A"] and t["score"].tolist() == [4.0, 0.5]
    c = read_pairs_file(csvf)
    assert c["sentence1"][0] == 'He said "hi", then left.'
    j = read_pairs_file(jsonl)
    assert j["score"].tolist() == [1.0, 2.5]


@pytest.mark.parametrize(
    "name,content,line,fragment",
    [
        ("bad_score.tsv", "sentence1\tsentence2\tscore\nA\tB\t1\nA\tB\thigh\n", 3, "score 'high'"),
        ("fields.tsv", "sentence1\tsentence2\tscore\nA\tB\n", 2, "2 fields"),
        ("header.tsv", "s1\ts2\tscore\nA\tB\t1\n", 1, "header"),
        ("empty_side.tsv", "sentence1\tsentence2\tscore\nA\t \t1\n", 2, "non-empty"),
        ("bad.jsonl", '{"sentence1": "A", "sentence2": "B", "score": 1}\n{"sentence1": "A"\n', 2, "invalid JSON"),
        ("missing.jsonl", '{"sentence1": "A", "score": 1}\n', 1, "sentence2"),
        ("nan.tsv", "sentence1\tsentence2\tscore\nA\tB\tnan\n", 2, "finite"),
    ],
)
def test_read_pairs_errors_name_file_and_line(tmp_path, name, content, line, fragment):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_pairs_file(path)
    assert f"{path}:{line}:" in str(e.value)
    assert fragment in str(e.value)


def test_read_pairs_invalid_utf8_and_missing(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"sentence1\tsentence2\tscore\nA\tB\t1\ncaf\xe9\tB\t2\n")
    with pytest.raises(DataError, match=r"latin1.tsv:3: found bytes that are not UTF-8"):
        read_pairs_file(path)
    with pytest.raises(FileNotFoundError, match="no such pairs file"):
        read_pairs_file(tmp_path / "nope.tsv")
