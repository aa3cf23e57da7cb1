"""Least privilege: each media-sync worker runs under an IAM user allowed exactly the actions its
declaration lists (runtime's own included), on a moto server that enforces IAM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from shared.app import open_services, send_job
from shared.bootstrap import Bootstrapper
from shared.declaration import WorkerSpec
from shared.emulator import free_port, wait_until_up
from shared.registry import discover
from shared.settings import FleetSettings, load_settings
from tests.helpers import fast_tuning, run_burst
from tests.media_sync_helpers import config, credentials, item, provider, reset
from workers.finalizer.resources import MEDIA
from workers.media_sync import DOWNLOAD, SYNC
from workers.media_sync.app import MediaSync
from workers.media_sync.config import MiB
from workers.media_sync.download_stage import DownloadStage
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import DOWNLOAD_QUEUE, PROVIDER_SECRET, SYNC_QUEUE
from workers.media_sync.sync_stage import SyncStage

__all__ = ["provider"]

SETUP_REQUESTS = 9  # three users, each: CreateUser, PutUserPolicy, CreateAccessKey


@pytest.fixture
def enforcing_moto() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# AWS authorises SQS batch calls by their single-message action (SendMessageBatch needs sqs:SendMessage);
# moto checks the batch call's own name. The declarations name AWS's actions; the test adds moto's aliases.
MOTO_BATCH_ALIASES = {
    "sqs:SendMessage": "sqs:SendMessageBatch",
    "sqs:DeleteMessage": "sqs:DeleteMessageBatch",
    "sqs:ChangeMessageVisibility": "sqs:ChangeMessageVisibilityBatch",
}


def policy(spec: WorkerSpec | None) -> dict[str, Any]:
    # moto matches resource ARNs for S3 only (shared/facts.md): the action sets are what this test checks.
    declared = set() if spec is None else {a for use in spec.permissions() for a in use.actions}
    actions = (
        ["*"]
        if spec is None
        else sorted(declared | {MOTO_BATCH_ALIASES[a] for a in declared & set(MOTO_BATCH_ALIASES)})
    )
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}


def user(iam: Any, name: str, spec: WorkerSpec | None) -> dict[str, str]:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="fleet", PolicyDocument=json.dumps(policy(spec)))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def as_user(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str]) -> None:
    for name, value in keys.items():
        monkeypatch.setenv(name, value)


async def test_sync_and_download_run_under_exactly_their_declared_actions(
    enforcing_moto: str, provider: ProviderProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given an IAM-enforcing emulator with an admin and one user per worker, allowed its declared actions only
    iam = boto3.client("iam", endpoint_url=enforcing_moto, region_name="us-east-1")
    admin, sync_keys, download_keys = (
        user(iam, "admin", None),
        user(iam, "sync", SYNC),
        user(iam, "download", DOWNLOAD),
    )
    settings: FleetSettings = load_settings(
        endpoint_url=enforcing_moto, prefix="iam-", health_dir=str(tmp_path), metrics_mode="off"
    )
    reset(provider, [item("small", 2000), item("large", 12 * MiB)])
    as_user(monkeypatch, admin)
    async with open_services(settings) as services:
        await Bootstrapper(services.aws, discover()).run()
        # an expiring token: the workers refresh it (secret write-back and the lease in fleet-leases)
        await services.aws.secretsmanager.put_secret_value(
            SecretId=settings.name_of(PROVIDER_SECRET), SecretString=json.dumps(credentials(expires_in=60))
        )
        job_id = await send_job(services, SYNC_QUEUE, {"action": "sync"}, kind="sync")
    cfg = config(provider)

    # When the sync worker runs as its user, then the download worker as its own
    as_user(monkeypatch, sync_keys)
    async with open_services(settings) as services:
        sync = await run_burst(SyncStage(services, MediaSync(services, cfg)), services, fast_tuning(), queue=SYNC_QUEUE)
    as_user(monkeypatch, download_keys)
    async with open_services(settings) as services:
        stage = DownloadStage(services, MediaSync(services, cfg))
        download = await run_burst(stage, services, fast_tuning(), queue=DOWNLOAD_QUEUE)
        # (and the user really is limited: an action it did not declare is refused)
        with pytest.raises(ClientError) as denied:
            await services.aws.s3.delete_object(Bucket=settings.name_of(MEDIA), Key="videos/small/small.mp4")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"

    # Then both did all their work: nothing retried or dead-lettered, both objects in S3 and COMPLETED
    assert (sync.stats.succeeded, sync.stats.retried, sync.stats.dead_lettered) == (1, 0, 0)
    assert (download.stats.succeeded, download.stats.retried, download.stats.dead_lettered) == (2, 0, 0)
    as_user(monkeypatch, admin)
    async with open_services(settings) as services:
        for media_id in ("small", "large"):
            assert (await MediaSync(services, cfg).store.get(media_id) or {}).get("status") == "COMPLETED"
        job = await services.jobs.get(job_id) or {}
        assert job.get("status") != "FAILED"
    assert provider.stats()["token_refreshes"] == 1
