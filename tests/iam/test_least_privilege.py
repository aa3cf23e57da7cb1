"""Least privilege, proven by running: each worker's end-to-end scenario passes as an IAM user that
holds exactly the policy infra/ generates from its declaration, uses every action it declares and
nothing else, and fails with any one action taken away."""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path

import pytest

from infra.policy import UNSCOPED
from shared.declaration import WorkerSpec
from shared.registry import Registry, discover
from shared.resources import Metrics
from shared.settings import FleetSettings, load_settings
from tests.iam.actions import Permission, Removal, removals
from tests.iam.harness import IamEmulator, Outcome, exercise, policy_for
from tests.iam.scenarios import load_all

REGISTRY = discover(plugins="")  # the installed workers, whatever FLEET_PLUGINS says
SCENARIOS = load_all()
WORKERS = sorted(set(REGISTRY.names()) & set(SCENARIOS))
PARALLEL_RUNS = 4  # the runs overlap their waits; beyond this the emulator's CPU is the limit


def declared(spec: WorkerSpec, settings: FleetSettings) -> set[Permission]:
    """What the declaration grants, by resource name (actions that take no ARN: on "*")."""
    out = set()
    for use in spec.permissions():
        for action in use.actions:
            unscoped = isinstance(use.resource, Metrics) or action in UNSCOPED
            out.add(Permission(action, "*" if unscoped else settings.name_of(use.resource)))
    return out


def resources_for(worker: str) -> Registry:
    """What the scenario's bootstrap creates: the worker's own resources and those of the workers its
    setup runs (a run with fewer resources is a faster run)."""
    return Registry.of([REGISTRY.get(worker), *(REGISTRY.get(n) for n in SCENARIOS[worker].needs)])


def explain(outcome: Outcome) -> str:
    error = "".join(traceback.format_exception(outcome.error)[-3:]) if outcome.error else "none"
    return f"denied: {sorted(map(str, outcome.denied))}; error: {error}"


def test_every_registered_worker_has_a_least_privilege_scenario() -> None:
    # Given the registered workers and the scenarios in tests/iam/scenarios/
    # Then each worker has one (add tests/iam/scenarios/<worker>.py: see its __init__), and no other
    assert sorted(set(REGISTRY.names()) - set(SCENARIOS)) == []
    assert sorted(set(SCENARIOS) - set(REGISTRY.names())) == []


@pytest.mark.parametrize("worker", WORKERS)
async def test_a_worker_runs_under_exactly_its_policy_and_uses_all_of_it(
    worker: str, iam_emulator: IamEmulator, tmp_path: Path
) -> None:
    # Given the worker's scenario, run as an IAM user holding only the policy generated for it
    spec, registered = REGISTRY.get(worker), SCENARIOS[worker]
    outcome = await exercise(iam_emulator, resources_for(worker), spec, registered.run, tmp_path)

    # Then it passes: nothing it did was refused
    assert outcome.passed, explain(outcome)
    # And it called exactly what it declares, resource by resource
    granted = declared(spec, outcome.settings)
    exempt = {p for p in granted if p.action in registered.unused}
    undeclared = sorted(map(str, outcome.used - granted))
    assert not undeclared, f"called without declaring it: {undeclared}"
    unused = sorted(map(str, granted - outcome.used - exempt))
    assert not unused, f"declared but never called: {unused}"
    # And every exemption is real: declared, and not called
    assert {p.action for p in exempt} == set(registered.unused)
    assert exempt.isdisjoint(outcome.used)


@pytest.mark.parametrize("worker", WORKERS)
async def test_taking_away_any_one_action_makes_the_worker_fail(
    worker: str, iam_emulator: IamEmulator, tmp_path: Path
) -> None:
    # Given each permission of the worker's policy that moto can tell apart
    spec, registered = REGISTRY.get(worker), SCENARIOS[worker]
    units = [
        r
        for r in removals(policy_for(spec, load_settings(), iam_emulator.account))
        if r.action not in registered.unused
    ]
    assert units
    gate = asyncio.Semaphore(PARALLEL_RUNS)

    async def without(removal: Removal) -> tuple[Removal, Outcome]:
        async with gate:
            return removal, await exercise(
                iam_emulator, resources_for(worker), spec, registered.run, tmp_path, policy=removal.apply
            )

    # When the scenario runs once without each of them
    results = await asyncio.gather(*(without(r) for r in units))

    # Then every run fails, refused the very action that was taken away
    wrong = [
        f"{removal}: {'passed' if outcome.passed else explain(outcome)}"
        for removal, outcome in results
        if outcome.passed or removal.action not in {p.action for p in outcome.denied}
    ]
    assert wrong == []
