"""simcse_ops.dedup: normalisation, shingles, MinHash LSH, exact Jaccard, decontamination."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from simcse_ops.config import ConfigError, DedupConfig, SourceConfig, parse_params
from simcse_ops.dedup import (
    CONTAMINATION_EXACT,
    CONTAMINATION_NEAR,
    EXACT_DUPLICATE,
    NEAR_DUPLICATE,
    NearPairs,
    ShingleSets,
    deduplicate,
    estimated_jaccard,
    greedy_near_duplicates,
    jaccard,
    jaccard_pairs,
    lsh_candidate_pairs,
    minhash_signatures,
    near_duplicate_pairs,
    normalize,
    normalize_many,
    shingles,
    tokens,
)
from simcse_ops.readers import FORMATS, load_source
from simcse_ops.schemas import TEXT_PAIRS
from tests.hygiene_fixtures import corpus_table, nli_table, real_sentences, sts_table

CFG = DedupConfig()


def test_normalize_nfkc_casefold_whitespace():
    assert normalize("  The\u00a0CAFÉ\t\tis\nOPEN  ") == "the café is open"
    assert normalize("ﬁne Straße") == "fine strasse"  # NFKC ligature, casefold ß
    assert normalize("Ⅻ ①") == "xii 1"  # compatibility forms
    assert normalize("a\u2003b\u3000c") == "a b c"  # Unicode spaces collapse
    assert normalize("") == ""
    assert normalize_many(["A  b", None]) == ["a b", None]


def test_normalize_many_equals_normalize(data_root):
    rng = random.Random(1)
    alphabet = ["a", "B", " ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x00", "é", "ﬁ", "ß",
                "\u00a0", "\u2003", "İ", "Σ", "ς", ".", "Ⅻ"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    texts += real_sentences(data_root, 50) + ["", "   ", None, "ABC", "a\x1cb"]
    assert normalize_many(texts) == [None if t is None else normalize(t) for t in texts]


def test_tokens_drop_punctuation():
    assert tokens(normalize("A man, a plan -- a canal: Panama!")) == ["a", "man", "a", "plan", "a", "canal", "panama"]
    assert tokens("don't u.s.") == ["dont", "us"]
    assert tokens("— ...") == []


def test_shingles_reference():
    assert shingles("a b c", 2) == {("a", "b"), ("b", "c")}
    assert shingles("hello", 2) == {("hello",)}
    assert shingles("", 2) == set()


TRICKY = [
    "A man is playing a guitar.", "a MAN  is playing a guitar", "Yes.", "", "...", "x",
    "the the the the", "Ünïcödé  wörds, ﬁne!", "one two", "one two three four five six",
]


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_vectorised_shingles_match_reference(ngram):
    norm = normalize_many(TRICKY)
    sets = ShingleSets.from_normalized(norm, ngram)
    assert len(sets) == len(TRICKY)
    for k, n in enumerate(norm):
        ref = shingles(n, ngram)
        got = set(sets.hashes[sets.offsets[k]:sets.offsets[k + 1]].tolist())
        assert len(got) == len(ref), (n, ref)
    # Equal shingle sets hash equal, whatever the text position; different sets differ.
    a = sets.hashes[sets.offsets[0]:sets.offsets[1]]
    b = sets.hashes[sets.offsets[1]:sets.offsets[2]]
    assert set(a.tolist()) == set(b.tolist())
    one = ShingleSets.from_normalized([norm[0]], ngram)
    assert set(one.hashes.tolist()) == set(a.tolist())


def test_exact_jaccard_pairs_match_reference():
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(80)]
    norm = normalize_many(texts)
    sets = ShingleSets.from_normalized(norm, 2)
    i = np.array([rng.randrange(80) for _ in range(300)])
    j = np.array([rng.randrange(80) for _ in range(300)])
    got = jaccard_pairs(sets, i, j)
    want = [jaccard(shingles(norm[a], 2), shingles(norm[b], 2)) for a, b in zip(i, j)]
    np.testing.assert_allclose(got, want)


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=200, dtype=np.int64).astype(np.uint64)
    # Set B shares 150 of A's 200 values and has 50 of its own: J = 150 / 250 = 0.6.
    other = rng.integers(0, 2**63, size=50, dtype=np.int64).astype(np.uint64)
    sets = ShingleSets(np.concatenate([base, base[:150], other]), np.array([0, 200, 400]))
    sig = minhash_signatures(sets, 1024, seed=3)
    est = estimated_jaccard(sig, np.array([0]), np.array([1]))[0]
    assert abs(est - 0.6) < 0.05
    # Empty sets keep the sentinel and never collide with anything.
    empty = ShingleSets(base[:3], np.array([0, 0, 3]))
    sig = minhash_signatures(empty, 16, seed=1)
    assert (sig[0] == np.iinfo(np.uint32).max).all() and (sig[1] != np.iinfo(np.uint32).max).any()


def test_lsh_finds_near_pairs_and_not_unrelated(data_root):
    sents = real_sentences(data_root, 300)
    edited = []
    for s in sents[:50]:
        w = s.split()
        w[len(w) // 2] = "zebra"  # one word replaced in the middle
        edited.append(" ".join(w))
    texts = sents + edited
    sets = ShingleSets.from_normalized(normalize_many(texts), CFG.ngram)
    pairs = near_duplicate_pairs(sets, CFG)
    found = {(int(a), int(b)) for a, b in zip(pairs.i, pairs.j)}
    truth = {(k, 300 + k) for k in range(50)
             if jaccard(shingles(normalize(texts[k]), 2), shingles(normalize(texts[300 + k]), 2)) >= CFG.threshold}
    assert len(truth) >= 30
    assert truth <= found
    assert found <= truth | {(a, b) for a, b in found if a >= 300}  # nothing among the originals
    assert all(s >= CFG.threshold for s in pairs.jaccard)


def test_lsh_window_bounds_large_buckets():
    sig = np.zeros((100, 8), dtype=np.uint32)  # 100 identical signatures: one huge bucket
    i, j = lsh_candidate_pairs(sig, bands=2, window=3)
    assert (i < j).all()
    assert len(i) < 100 * 5  # not 4950 pairs
    # Every item is still paired with some other item of its bucket.
    assert set(j.tolist()) | set(i.tolist()) == set(range(100))


def test_greedy_removes_only_items_near_a_kept_item():
    # 0~1, 1~2 but 0 !~ 2: 1 is removed (near 0), 2 stays (its only neighbour 1 was removed).
    pairs = NearPairs(np.array([0, 1]), np.array([1, 2]), np.array([0.8, 0.8]))
    removed, matched, _ = greedy_near_duplicates(3, pairs)
    assert removed.tolist() == [False, True, False]
    assert matched[1] == 0
    # The best kept match is reported.
    pairs = NearPairs(np.array([0, 1]), np.array([2, 2]), np.array([0.75, 0.9]))
    removed, matched, jac = greedy_near_duplicates(3, pairs)
    assert matched[2] == 1 and jac[2] == pytest.approx(0.9)


@pytest.mark.parametrize("dedup, message", [
    ({"num_perm": 128, "bands": 30}, r"p\.yaml: dedup\.bands: 30 must divide dedup\.num_perm"),
    ({"threshold": 1.5}, r"dedup\.threshold: expected in \(0, 1\]"),
    ({"ngram": 17}, r"dedup\.ngram: expected 1\.\.16"),
    ({"roles": ["train"]}, r"dedup\.roles\[0\]: 'train' is not a role"),
    ({"treshold": 0.5}, r"dedup: unknown key\(s\) 'treshold'"),
])
def test_config_is_checked_at_load(dedup, message):
    raw = {"data": {}, "ingest": {}, "sources": {}, "evaluate": {"tasks": {}}, "variants": {}, "dedup": dedup}
    with pytest.raises(ConfigError, match=message):
        parse_params(raw, "p.yaml")


def test_decontamination_covers_every_evaluation_role(params):
    """The evaluation sources are every source whose role starts with eval- (config.EVAL_ROLES),
    by definition: no key lists the roles, so no edit of params.yaml can drop one."""
    from simcse_ops.config import EVAL_ROLES
    from simcse_ops.dedup import plan_sources

    assert EVAL_ROLES == ("eval-sts", "eval-domain")
    source = {"format": "x", "paths": ["x"]}
    raw = {"data": {}, "ingest": {}, "evaluate": {"tasks": {}}, "variants": {}, "dedup": {}, "sources": {
        "wiki": {**source, "role": "train-unsup"}, "sts": {**source, "role": "eval-sts"},
        "qa": {**source, "role": "eval-domain"}, "seat": {**source, "role": "bias"}}}
    assert plan_sources(parse_params(raw, "p.yaml"), DedupConfig()) == (["wiki"], ["sts", "qa"])
    _, evals = plan_sources(params, params.dedup)  # the project's: the domain test sets too
    assert {"stsb", "sick", "mqp", "pubmedqa_conclusion", "biosses"} <= set(evals)
    with pytest.raises(ConfigError, match=r"dedup: unknown key\(s\) 'eval_roles'"):
        parse_params({**raw, "dedup": {"eval_roles": ["eval-sts"]}}, "p.yaml")


def _evals():
    return {"evalset": ("sts", sts_table([
        ("A man is playing a guitar.", "A woman is slicing an onion.", 1.0),
        ("Three boys are running across the wide green field together.", "Kids run.", 2.0),
    ]))}


def test_deduplicate_reasons_and_audit(data_root):
    base = real_sentences(data_root, 40)
    long_edit = base[5].split()
    long_edit.insert(len(long_edit) // 2, "indeed")
    texts = base + [
        "  a MAN is playing a GUITAR. ",                                 # 40: contamination, exact
        "Three boys are running across the wide green field together today.",  # 41: contamination, near
        base[3].upper(),                                                 # 42: exact duplicate of 3
        " ".join(long_edit),                                             # 43: near duplicate of 5
    ]
    res = deduplicate({"c": ("corpus", corpus_table(texts))}, _evals(), CFG)
    keep = res.keep["c"]
    assert keep[:40].all()
    assert not keep[40:].any()
    audit = res.audit.set_index("row")
    assert audit.loc[40, "reason"] == CONTAMINATION_EXACT
    assert audit.loc[40, "matched_source"] == "evalset" and audit.loc[40, "matched_line"] == 1
    assert audit.loc[40, "matched_field"] == "sentence1"
    assert audit.loc[41, "reason"] == CONTAMINATION_NEAR
    assert CFG.threshold <= audit.loc[41, "jaccard"] < 1
    assert audit.loc[41, "matched_line"] == 2 and audit.loc[41, "eval_sets"] == "evalset"
    assert audit.loc[42, "reason"] == EXACT_DUPLICATE and audit.loc[42, "matched_line"] == 4
    assert audit.loc[43, "reason"] == NEAR_DUPLICATE and audit.loc[43, "matched_line"] == 6
    m = res.metrics
    assert m["sources"]["c"]["removed"] == {CONTAMINATION_EXACT: 1, CONTAMINATION_NEAR: 1,
                                            EXACT_DUPLICATE: 1, NEAR_DUPLICATE: 1}
    assert m["decontamination"]["by_training_source"]["c"] == {"exact": 1, "near": 1, "total": 2}
    assert m["decontamination"]["by_eval_set"] == {"evalset": 2}


def test_nli_triple_removed_when_any_side_matches_an_eval_sentence(data_root):
    s = real_sentences(data_root, 9)
    triples = [(s[0], s[1], s[2]), (s[3], "A woman is slicing an onion.", s[4]), (s[5], s[6], s[7])]
    res = deduplicate({"n": ("nli", nli_table(triples))}, _evals(), CFG)
    assert res.keep["n"].tolist() == [True, False, True]
    row = res.audit.iloc[0]
    assert row["field"] == "positive" and row["matched_field"] == "sentence2"


def test_eval_sets_per_split_and_across_sources(data_root):
    s = real_sentences(data_root, 6)
    evals = {"stsx": ("sts", sts_table([(s[0], s[1], 1.0), (s[2], s[1], 3.0)], split=["train", "test"]))}
    train = {
        "a": ("corpus", corpus_table([s[1], s[3], s[4]])),
        "b": ("corpus", corpus_table([s[3], s[5]])),  # s[3] duplicates source a's row
    }
    res = deduplicate(train, evals, CFG)
    assert res.keep["a"].tolist() == [False, True, True]
    assert res.keep["b"].tolist() == [False, True]
    assert res.metrics["decontamination"]["by_eval_set"] == {"stsx/test": 1, "stsx/train": 1}
    b = res.audit[res.audit.source == "b"].iloc[0]
    assert b["reason"] == EXACT_DUPLICATE and b["matched_source"] == "a"
    # Without across_sources each source keeps its own copy.
    res = deduplicate(train, evals, DedupConfig(across_sources=False))
    assert res.keep["b"].tolist() == [True, True]


def test_null_rows_pass_through_and_are_counted(data_root):
    s = real_sentences(data_root, 3)
    res = deduplicate({"c": ("corpus", corpus_table([s[0], None, s[1], None]))}, _evals(), CFG)
    assert res.keep["c"].tolist() == [True, True, True, True]
    assert res.metrics["sources"]["c"]["null_rows"] == 2


def test_triple_with_a_null_sentence_passes_through(data_root):
    """A triple with one null sentence is kept and not compared (before the phases were split,
    building its exact-duplicate key raised TypeError)."""
    s = real_sentences(data_root, 4)
    triples = [(s[0], s[1], s[2]), (s[0], None, s[2]), (s[0], s[1], s[2])]
    res = deduplicate({"n": ("nli", nli_table(triples))}, _evals(), CFG)
    assert res.keep["n"].tolist() == [True, True, False]
    assert res.metrics["sources"]["n"]["null_rows"] == 1
    assert res.audit["reason"].tolist() == [EXACT_DUPLICATE] and res.audit["row"].tolist() == [2]


# -- domain kinds: pairs and retrieval evaluation sets, text_pairs training sources ----------


def _domain_evals(data_root):
    pq_paths = ("domain/biomedical/pubmedqa_pqal/ori_pqal*.json",)
    cfgs = {
        "mqp": SourceConfig("mqp_csv", "eval-domain", ("domain/biomedical/mqp/mqp.csv",)),
        "pubmedqa_conclusion": SourceConfig("pubmedqa_retrieval", "eval-domain", pq_paths,
                                            {"target": "conclusion"}),
    }
    evals = {n: (FORMATS[c.format].kind, load_source(n, c, data_root).table) for n, c in cfgs.items()}
    mqp, ret = evals["mqp"][1], evals["pubmedqa_conclusion"][1]

    def first(table, **eq):
        mask = None
        for col, value in eq.items():
            m = pc.equal(table.column(col), value)
            mask = m if mask is None else pc.and_(mask, m)
        return table.filter(mask).to_pylist()[0]

    picks = {
        "mqp_dev": first(mqp, split="dev")["sentence1"],
        "mqp_test": first(mqp, split="test")["sentence2"],
        "query_dev": first(ret, record="query", split="dev")["text"],
        "query_test": first(ret, record="query", split="test")["text"],
        "doc": first(ret, record="doc")["text"],
    }
    return evals, picks


def test_domain_eval_sets_decontaminate_per_set(data_root):
    evals, p = _domain_evals(data_root)
    s = real_sentences(data_root, 3)
    texts = [s[0], p["mqp_dev"], p["mqp_test"].upper(), s[1], p["query_dev"], p["query_test"], p["doc"], s[2]]
    res = deduplicate({"c": ("corpus", corpus_table(texts))}, evals, CFG)
    # documents of a retrieval set are not evaluation text (a transductive corpus may hold them)
    assert res.keep["c"].tolist() == [True, False, False, True, False, False, True, True]
    dec = res.metrics["decontamination"]
    assert dec["by_eval_set"] == {"mqp/dev": 1, "mqp/test": 1,
                                  "pubmedqa_conclusion/dev": 1, "pubmedqa_conclusion/test": 1}
    assert "pubmedqa_conclusion/dev" in dec["eval_sets"] and "mqp/test" in dec["eval_sets"]
    assert set(res.audit["reason"]) == {CONTAMINATION_EXACT}
    row = res.audit.set_index("row").loc[4]
    assert row["matched_source"] == "pubmedqa_conclusion" and row["matched_field"] == "text"


def _text_pairs_table(pairs):
    return pa.table({"anchor": [a for a, _ in pairs], "positive": [b for _, b in pairs],
                     "doc": ["d"] * len(pairs), "file": ["x.json"] * len(pairs),
                     "line": list(range(1, len(pairs) + 1))}, schema=TEXT_PAIRS)


def test_text_pairs_near_duplicates_need_both_sides_near(data_root):
    s = real_sentences(data_root, 12)
    abstract = " ".join(s[:8])
    rest = [" ".join(x for j, x in enumerate(s[:8]) if j != i) for i in range(8)]
    long_edit = abstract.split()
    long_edit.insert(len(long_edit) // 2, "indeed")
    pairs = [(s[i], rest[i]) for i in range(4)]       # sentence -> rest of its abstract: all kept
    pairs += [(s[8], abstract), (s[8], s[9])]         # same anchor, different positives: kept
    pairs += [(s[8] + " ", " ".join(long_edit))]      # both sides near row 4: near duplicate
    pairs += [(s[10], s[11]), (s[10].upper(), s[11])]  # exact duplicate pair
    pairs += [(s[11], "A woman is slicing an onion.")]  # positive is an evaluation sentence
    res = deduplicate({"tp": ("text_pairs", _text_pairs_table(pairs))}, _evals(), CFG)
    assert res.keep["tp"].tolist() == [True] * 6 + [False, True, False, False]
    audit = res.audit.set_index("row")
    assert audit.loc[6, "reason"] == NEAR_DUPLICATE and audit.loc[6, "matched_line"] == 5
    assert audit.loc[8, "reason"] == EXACT_DUPLICATE
    assert audit.loc[9, "reason"] == CONTAMINATION_EXACT and audit.loc[9, "field"] == "positive"
    assert res.metrics["decontamination"]["by_eval_set"] == {"evalset": 1}
