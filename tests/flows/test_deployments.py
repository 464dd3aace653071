"""flows/prefect.yaml: one scheduled deployment per domain variant, loadable entry points, serve."""

from __future__ import annotations

import zoneinfo
from dataclasses import replace

import pytest
import yaml

from flows.retrain import domain_variants
from flows.serve import PREFECT_FILE, build_deployments, read_deployments, to_schedules


@pytest.fixture(scope="module")
def specs():
    return read_deployments(PREFECT_FILE)


def test_one_retrain_deployment_per_domain_variant(params, specs):
    retrains = [s for s in specs if s.entrypoint == "flows/retrain.py:retrain_domain"]
    assert sorted(s.parameters["domain"] for s in retrains) == sorted(domain_variants(params))
    assert all(s.name == s.parameters["domain"] for s in retrains)  # retrain-domain/<domain>
    for s in retrains:
        assert len(s.schedules) == 1, f"{s.name}: one cron schedule expected"
        sched = s.schedules[0]
        zoneinfo.ZoneInfo(sched["timezone"])  # a real IANA zone
        assert len(sched["cron"].split()) == 5


def test_schedules_live_only_in_prefect_yaml(project_root):
    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield str(k)
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    assert not {"cron", "schedule", "schedules", "timezone"} & set(keys(raw))


def test_every_deployment_targets_the_process_pool(project_root):
    raw = yaml.safe_load((project_root / "flows" / "prefect.yaml").read_text())
    for d in raw["deployments"]:
        assert d["work_pool"]["name"] == "simcse-local", d["name"]


def test_serve_builds_the_same_deployments_with_their_schedules(specs):
    deployments = build_deployments(specs)
    by_name = {(d.flow_name, d.name): d for d in deployments}
    assert ("retrain-domain", "biomed") in by_name and ("simcse-pipeline", "all") in by_name
    biomed = by_name["retrain-domain", "biomed"]
    assert biomed.parameters == {"domain": "biomed"}
    (sched,) = biomed.schedules
    assert sched.schedule.cron == "0 3 * * 1" and sched.schedule.timezone == "Europe/Berlin"
    assert by_name["simcse-pipeline", "all"].schedules == []


def test_non_cron_schedules_are_rejected(specs):
    bad = replace(specs[0], schedules=({"interval": 60},))
    with pytest.raises(ValueError, match="must be cron schedules"):
        to_schedules(bad)
