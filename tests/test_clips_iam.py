"""Least privilege: the clips worker runs under an IAM user allowed exactly what its WorkerSpec declares.

A moto server of its own enforces IAM (switched on through `/moto-api/reset-auth` once the fleet is
bootstrapped and the user exists). moto matches resource ARNs only for S3, so the media bucket is granted by
ARN and everything else on `*`: this checks the action set; infra's CDK assertions check the ARNs.

moto cannot authorise a presigned URL while it enforces IAM (it looks for an `Authorization` header and
answers 500), and ffmpeg reads the source through one. So the worker talks to moto through `PresignShim`,
which passes every request through untouched except presigned ones: those it re-signs, for the same user,
with an `Authorization` header — moto then decides with that user's policy, as S3 would for the URL.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from shared.app import open_services
from shared.bootstrap import Bootstrapper
from shared.emulator import EmbeddedAws
from shared.registry import discover
from shared.settings import FleetSettings, load_settings
from shared.stage import Services
from tests.clips_helpers import begin_event, clip_item, put_on_queue, run_clips, seed_episode, segments, statuses
from tests.faultproxy import HOP_BY_HOP, FaultProxy, Request
from tests.media import Media, media_fixture  # noqa: F401  (the session fixture)
from workers.clips import WORKER
from workers.clips.resources import MEDIA
from workers.clips.store import COMPLETE, FAILED, IN_PROGRESS

# moto checks a batch call against its operation name; AWS authorises it with the single action
# (SendMessageBatch needs sqs:SendMessage). Grant moto's names for exactly the actions declared.
MOTO_ALIASES = {
    "sqs:SendMessage": ["sqs:SendMessageBatch"],
    "sqs:DeleteMessage": ["sqs:DeleteMessageBatch"],
    "sqs:ChangeMessageVisibility": ["sqs:ChangeMessageVisibilityBatch"],
}


class PresignShim(FaultProxy):
    """A proxy in front of moto that turns presigned (query-signed) requests into header-signed ones, and
    passes everything else through untouched (its Host header too: moto checks header signatures)."""

    def __init__(self, upstream: str, secrets: dict[str, str]) -> None:
        super().__init__(upstream)
        self.secrets = secrets  # access key id -> secret key, filled as users are made
        self.resigned = 0

    def _forward(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        headers = {k: v for k, v in request.headers.items() if k not in HOP_BY_HOP}
        path = self.resign(request.method, request.path, headers)
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            conn.request(request.method, path, body=request.body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def resign(self, method: str, path: str, headers: dict[str, str]) -> str:
        parts = urlsplit(path)
        query = parse_qsl(parts.query, keep_blank_values=True)
        signed = dict(query)
        if "X-Amz-Signature" not in signed:
            return path
        key_id = signed["X-Amz-Credential"].split("/")[0]
        kept = [(k, v) for k, v in query if not k.startswith("X-Amz-")]
        bare = parts.path + (f"?{urlencode(kept)}" if kept else "")
        host = headers.get("host", "")
        request = AWSRequest(method=method, url=f"http://{host}{bare}", headers={"Host": host})
        S3SigV4Auth(Credentials(key_id, self.secrets[key_id]), "s3", "us-east-1").add_auth(request)
        headers.update({k.lower(): v for k, v in request.headers.items() if k.lower() != "host"})
        self.resigned += 1
        return bare


def policy(settings: FleetSettings, without: str | None = None) -> dict[str, Any]:
    statements = []
    for use in WORKER.permissions():
        declared = [a for a in use.actions if a != without]
        actions = [*declared, *(alias for a in declared for alias in MOTO_ALIASES.get(a, []))]
        if not actions:
            continue
        if use.resource == MEDIA:
            bucket = settings.name_of(MEDIA)
            resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
        else:
            resources = ["*"]
        statements.append({"Effect": "Allow", "Action": actions, "Resource": resources})
    return {"Version": "2012-10-17", "Statement": statements}


@pytest.fixture(scope="module")
def enforcing_aws() -> Iterator[str]:
    with EmbeddedAws(mode="process") as emulator:
        yield emulator.url


@pytest.fixture(scope="module")
def shim(enforcing_aws: str) -> Iterator[PresignShim]:
    with PresignShim(enforcing_aws, {}) as proxy:
        yield proxy


def enforce(url: str, after: int) -> None:
    request = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=str(after).encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
async def admin(enforcing_aws: str, shim: PresignShim, prefix: str, tmp_path: Path) -> AsyncIterator[Services]:
    """Unauthenticated services on the enforcing emulator, every resource bootstrapped (auth still off)."""
    enforce(enforcing_aws, 1_000_000)
    settings = load_settings(prefix=prefix, endpoint_url=shim.url, health_dir=str(tmp_path), metrics_mode="off")
    async with open_services(settings) as services:
        await Bootstrapper(services.aws, discover()).run()
        yield services
    enforce(enforcing_aws, 1_000_000)


async def _worker_user(admin: Services, shim: PresignShim, name: str, document: dict[str, Any]) -> dict[str, str]:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=admin.settings.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="clips", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    shim.secrets[key["AccessKeyId"]] = key["SecretAccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


async def _run_as(
    admin: Services, keys: dict[str, str], enforcing_aws: str, monkeypatch: pytest.MonkeyPatch, **tuning: Any
) -> None:
    for k, v in keys.items():
        monkeypatch.setenv(k, v)
    enforce(enforcing_aws, 0)
    try:
        async with open_services(admin.settings) as services:
            await run_clips(services, **tuning)
    finally:
        enforce(enforcing_aws, 1_000_000)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


async def _one_clip(admin: Services, media: Media) -> None:
    await seed_episode(admin, "ep-iam", media.with_audio)
    clip = {"clipId": "c", "segments": segments(("00:00:01.200", "00:00:03"))}
    await put_on_queue(admin, begin_event("ep-iam", [clip]))


async def test_the_worker_needs_nothing_beyond_its_declaration(
    admin: Services,
    enforcing_aws: str,
    shim: PresignShim,
    media: Media,
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
) -> None:
    # Given an IAM user allowed exactly the actions the clips WorkerSpec declares (runtime's included)
    keys = await _worker_user(admin, shim, f"{prefix}clips", policy(admin.settings))
    # And an event whose clip must be fanned out, probed, rendered, uploaded and recorded
    await _one_clip(admin, media)

    # When the worker runs as that user, with IAM enforced
    await _run_as(admin, keys, enforcing_aws, monkeypatch)

    # Then the clip was made (ffmpeg's presigned reads authorised as that user, through the shim)
    assert statuses(await clip_item(admin, "ep-iam", "c")) == [IN_PROGRESS, COMPLETE]
    assert shim.resigned > 0


async def test_without_a_declared_action_the_worker_fails(
    admin: Services,
    enforcing_aws: str,
    shim: PresignShim,
    media: Media,
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
) -> None:
    # Given the same user without s3:PutObject (the check above can fail)
    keys = await _worker_user(admin, shim, f"{prefix}clips-np", policy(admin.settings, without="s3:PutObject"))
    await _one_clip(admin, media)

    # When the worker runs as that user (one attempt: AccessDenied is retried like any AWS error otherwise)
    await _run_as(admin, keys, enforcing_aws, monkeypatch, max_attempts=1)

    # Then the clip could not be stored, and says why
    item = await clip_item(admin, "ep-iam", "c")
    assert statuses(item)[0] == IN_PROGRESS and statuses(item)[-1] == FAILED
    assert "AccessDenied" in item["processingError"]["code"] + item["processingError"]["message"]
