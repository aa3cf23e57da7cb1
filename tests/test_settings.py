"""Settings: defaults from the contracts, overrides from the environment, and clear failures."""

from __future__ import annotations

import pytest

from shared.resources import JOBS
from shared.settings import ConfigError, load_settings
from workers.ingest.resources import COMPACT, INGEST, LAKE


def test_defaults_match_the_contracts() -> None:
    # Given no FLEET_* settings but the endpoint
    # When settings load
    s = load_settings()
    # Then names are the contract defaults, and the tuning is safe for ECS
    assert s.name_of(INGEST) == "fleet-ingest"
    assert s.name_of(JOBS) == "fleet-jobs"
    assert s.name_of(LAKE) == "fleet-lake"
    t = s.tuning("echo")
    assert t.wait_time_seconds == 20 and t.batch_size == 10
    assert t.drain_timeout < 30  # below ECS's default stopTimeout
    assert t.heartbeat_seconds < t.visibility_timeout
    assert t.pool_size > t.concurrency


def test_prefix_and_per_worker_overrides_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a prefix, a renamed queue and a per-worker override
    monkeypatch.setenv("FLEET_PREFIX", "dev-")
    monkeypatch.setenv("FLEET_QUEUES__INGEST", "files-in")
    monkeypatch.setenv("FLEET_WORKERS__CLIPS__CONCURRENCY", "2")
    monkeypatch.setenv("FLEET_WORKERS__CLIPS__VISIBILITY_TIMEOUT", "120")
    # When settings load
    s = load_settings()
    # Then they apply, and other workers keep the defaults
    assert s.name_of(INGEST) == "dev-files-in"
    assert s.name_of(COMPACT) == "dev-fleet-compact"
    assert s.tuning("clips").concurrency == 2
    assert s.tuning("clips").heartbeat_seconds == 40
    assert s.tuning("ingest").concurrency == 10


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEET_DEFAULTS__CONCURRENCY": "0"}, "FLEET_DEFAULTS__CONCURRENCY"),
        ({"FLEET_DEFAULTS__WAIT_TIME_SECONDS": "25"}, "less than or equal to 20"),
        ({"FLEET_DEFAULTS__MAX_ATTEMPTS": "9"}, "FLEET_DEFAULTS__MAX_ATTEMPTS"),
        ({"FLEET_WORKERS__ECHO__HEARTBEAT_INTERVAL": "45"}, "heartbeat_interval (45.0s) must be shorter"),
        ({"FLEET_WORKERS__ECHO__CONCURENCY": "4"}, "FLEET_WORKERS__ECHO__CONCURENCY: Extra inputs are not permitted"),
        ({"FLEET_ENDPOINT_URL": "localhost:4566"}, "must start with http://"),
        ({"FLEET_LOG_LEVEL": "LOUD"}, "FLEET_LOG_LEVEL"),
    ],
)
def test_invalid_settings_fail_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    # Given one bad setting
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # When settings load, Then the error names it
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)


def test_a_stages_own_settings_fail_the_same_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import load_stage_settings
    from workers.ingest.config import IngestConfig

    # Given a bad ingest batch size
    monkeypatch.setenv("FLEET_INGEST_BATCH_SIZE", "0")
    # When the stage's settings load, Then the variable is named
    with pytest.raises(ConfigError, match="FLEET_INGEST_BATCH_SIZE: Input should be greater than or equal to 1"):
        load_stage_settings(IngestConfig)
