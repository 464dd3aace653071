"""The rule-based sentence splitter: hand-made cases, and agreement with pysbd on real text."""

from __future__ import annotations

import json
import random

import pytest

from simcse_ops.readers.sentences import get_splitter, split_pysbd, split_rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Dr. Smith met Mr. Jones. They talked.", ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("J. R. R. Tolkien wrote it. It sold.", ["J. R. R. Tolkien wrote it.", "It sold."]),
        ("It moved to the U.S. Army base. It stayed.", ["It moved to the U.S. Army base.", "It stayed."]),
        ("See Fig. 2 and Smith et al. The end.", ["See Fig. 2 and Smith et al. The end."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("The value was 3.5 mm. Next came 4.", ["The value was 3.5 mm.", "Next came 4."]),
        ("Significant (P<0. 001) in all. Good.", ["Significant (P<0. 001) in all.", "Good."]),
        ("lower case start. and continues.", ["lower case start. and continues."]),
        ("  ", []),
    ],
)
def test_split_rules(text, expected):
    assert split_rules(text) == expected


def test_unknown_splitter():
    with pytest.raises(ValueError, match="unknown sentence splitter 'punkt'"):
        get_splitter("punkt")


def test_agrees_with_pysbd_on_pubmed(data_root):
    """The fast rules give pysbd's split on at least 95% of PubMedQA paragraphs (sampled)."""
    data = json.loads((data_root / "domain/biomedical/pubmedqa_pqal/ori_pqal.json").read_text())
    paragraphs = [c for v in data.values() for c in v["CONTEXTS"]]
    sample = random.Random(0).sample(paragraphs, 150)
    agree = sum(split_rules(p) == split_pysbd(p) for p in sample)
    assert agree >= 0.95 * len(sample)
