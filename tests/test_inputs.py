"""simcse_ops.inputs: each consumer's folder holds exactly the sources it reads, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from simcse_ops.config import ConfigError
from simcse_ops.ingest import link_data_root_for_queue
from simcse_ops.inputs import consumers, write_inputs


def _fake_data(params, tmp_path: Path) -> tuple[Path, Path]:
    clean, ingested = tmp_path / "clean", tmp_path / "ingested"
    clean.mkdir()
    ingested.mkdir()
    for name, src in params.sources.items():
        df = pd.DataFrame({"text": [f"{name} row {i}" for i in range(3)]})
        df.to_parquet(ingested / f"{name}.parquet")
        if src.role in params.dedup.roles:
            df.iloc[:2].to_parquet(clean / f"{name}.parquet")
    return clean, ingested


def test_each_variant_reads_its_corpus_its_dev_splits_and_its_tasks(params):
    plan = consumers(params)
    assert plan["unsup-wiki/train"] == {"wiki1m": "clean", "stsb": "ingested"}
    assert plan["sup-nli/train"] == {"snli": "clean", "stsb": "ingested"}
    assert plan["base/train"] == {}  # pretrained: nothing to read
    biomed = params.variant("biomed")
    assert plan["biomed/train"] == {**{s: "clean" for s in biomed.corpus}, "stsb": "ingested",
                                    **{params.evaluate.domain_tasks[t].source: "ingested" for t in biomed.domain_tasks}}
    sts = {t.source for t in params.evaluate.tasks.values()}
    assert set(plan["unsup-wiki/evaluate"]) == sts
    assert set(plan["biomed/evaluate"]) == sts | {params.evaluate.domain_tasks[t].source for t in biomed.domain_tasks}
    assert plan["bias"] == {params.bias.source: "ingested"}
    # no general variant reads a domain source
    domain = {n for n, s in params.sources.items() if s.role in ("domain", "eval-domain")}
    for v in ("unsup-wiki", "sup-nli"):
        assert not (set(plan[f"{v}/train"]) | set(plan[f"{v}/evaluate"])) & domain


def test_folders_are_byte_copies_with_a_manifest(params, tmp_path):
    clean, ingested = _fake_data(params, tmp_path)
    out = tmp_path / "inputs"
    write_inputs(params, clean, ingested, out)
    wiki = out / "unsup-wiki/train/wiki1m.parquet"
    assert wiki.read_bytes() == (clean / "wiki1m.parquet").read_bytes()
    assert (out / "unsup-wiki/train/stsb.parquet").read_bytes() == (ingested / "stsb.parquet").read_bytes()
    manifest = json.loads((out / "unsup-wiki/train/sources.json").read_text())
    assert manifest["wiki1m"]["from"] == "clean/wiki1m.parquet" and len(manifest["wiki1m"]["md5"]) == 32
    assert sorted(p.name for p in (out / "base/train").iterdir()) == ["sources.json"]
    # a changed domain source changes only the folders that read it
    before = {f: _folder_bytes(out / f) for f in consumers(params)}
    pd.DataFrame({"text": ["new"]}).to_parquet(ingested / "pubmedqa_conclusion.parquet")
    write_inputs(params, clean, ingested, out)
    changed = {f for f in consumers(params) if _folder_bytes(out / f) != before[f]}
    assert changed == {"base/evaluate", "biomed/train", "biomed/evaluate"}


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_missing_source_names_the_stage_and_nothing_is_half_written(params, tmp_path):
    clean, ingested = _fake_data(params, tmp_path)
    (clean / "snli.parquet").unlink()
    out = tmp_path / "inputs"
    with pytest.raises(FileNotFoundError, match=r"snli.parquet: not found \(sup-nli/train reads .*dvc repro dedup"):
        write_inputs(params, clean, ingested, out)
    assert not out.exists()


def test_a_corpus_source_dedup_does_not_clean_is_refused(params):
    import dataclasses

    v = dataclasses.replace(params.variants["unsup-wiki"], corpus=("stsb",))
    bad = dataclasses.replace(params, variants={**params.variants, "unsup-wiki": v})
    with pytest.raises(ConfigError, match=r"variants.unsup-wiki.corpus: source 'stsb' has role 'eval-sts'"):
        consumers(bad)


def test_a_relative_data_root_is_linked_for_queued_experiments(tmp_path):
    repo, shared = tmp_path / "repo", tmp_path / "shared" / "data"
    repo.mkdir()
    shared.mkdir(parents=True)
    link = link_data_root_for_queue(repo, "../shared/data")
    assert link == repo.resolve() / ".dvc/tmp/exps/shared" and link.resolve() == shared.parent.resolve()
    copy = repo / ".dvc/tmp/exps/tmpabc"  # where `dvc queue start` runs an experiment
    copy.mkdir()
    assert (copy / "../shared/data").resolve() == shared.resolve()
    assert link_data_root_for_queue(repo, "../shared/data") == link  # idempotent
    assert link_data_root_for_queue(repo, str(shared)) is None  # absolute: nothing to do
    assert link_data_root_for_queue(repo, "data/raw") is None  # inside the repository
