"""media-sync when things go wrong: deletions, permanent failures, unsafe URLs, throttling, token refresh,
alerts, metrics and secrets in logs. Real emulator, real provider server."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import Retry
from shared.logs import JsonFormatter, TextFormatter
from shared.metrics import Metrics
from shared.stage import Services
from tests.helpers import drain_queue
from tests.media_sync_helpers import (
    ACCESS_TOKEN,
    CLIENT_SECRET,
    REFRESH_TOKEN,
    config,
    context,
    dead_letters,
    download_tuning,
    item,
    object_bytes,
    open_uploads,
    provider,
    queued_downloads,
    reset,
    run_downloads,
    seed_secret,
    send_download,
    served_ranges,
    sha256,
    stages,
    sync_item,
)
from workers.finalizer.demo import subscribe_queue
from workers.media_sync import metrics as media_metrics
from workers.media_sync.config import MiB
from workers.media_sync.provider.content import sha256_of
from workers.media_sync.provider.process import ProviderProcess
from workers.media_sync.resources import PROVIDER_SECRET

__all__ = ["provider"]


def reasons(letters: list[dict[str, object]]) -> list[tuple[str, str]]:
    out = []
    for m in letters:
        attrs = m["MessageAttributes"]
        assert isinstance(attrs, dict)
        out.append((attrs["fleet.error-code"]["StringValue"], attrs["fleet.error"]["StringValue"]))
    return out


async def test_media_deleted_at_source_is_marked_deleted_not_failed(fleet: Services, provider: ProviderProcess) -> None:
    # Given a listed item the provider now answers 404 for
    reset(provider, [item("gone", 1000)], not_found=["gone"])
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider))
    await send_download(fleet, {"media_id": "gone", "filename": "gone.mp4", "size": 1000})

    # When the download worker runs
    await run_downloads(fleet, download)

    # Then the item is DELETED, the message succeeded (no retries, no dead letter)
    record = await sync_item(fleet, "gone")
    assert record["status"] == "DELETED"
    assert "404" in record["error"]
    assert await dead_letters(fleet) == []
    assert await queued_downloads(fleet) == []


@pytest.mark.parametrize("failure", ["refused after the drop", "last attempt"])
async def test_a_permanent_failure_mid_file_leaves_no_open_multipart_upload(
    fleet: Services, provider: ProviderProcess, failure: str
) -> None:
    # Given a 20 MiB item whose connection drops after two parts are uploaded, and then either the provider
    # refuses the resume (403: permanent) or the drop happens on the message's last attempt
    size = 20 * MiB
    knobs: dict[str, object] = {"drop_after": {"doomed": 12 * MiB}}
    tuning = download_tuning(max_attempts=3)
    overrides: dict[str, object] = {}
    if failure == "refused after the drop":
        knobs["fail_after_drop"] = {"doomed": 403}
    else:
        tuning = download_tuning(max_attempts=1)
        overrides["stream_resumes"] = 0
    reset(provider, [item("doomed", size)], **knobs)
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider, **overrides))
    await send_download(fleet, {"media_id": "doomed", "filename": "doomed.mp4", "size": size})

    # When the download worker runs
    await run_downloads(fleet, download, tuning)

    # Then the upload was aborted (no orphaned parts), the item is FAILED with the reason, and the message
    # is dead-lettered with it
    assert await open_uploads(fleet) == []
    record = await sync_item(fleet, "doomed")
    assert record["status"] == "FAILED"
    assert "upload_id" not in record
    [(code, reason)] = reasons(await dead_letters(fleet))
    expected = ("PROVIDER_REFUSED", "403") if failure == "refused after the drop" else ("STREAM_DROPPED", "dropped")
    assert code == expected[0] and expected[1] in reason and expected[1] in record["error"]


async def test_a_redirect_to_the_metadata_service_is_refused(fleet: Services, provider: ProviderProcess) -> None:
    # Given an item whose download redirects to the instance metadata address
    reset(provider, [item("ssrf", 1000)], redirect={"ssrf": "http://169.254.169.254/latest/meta-data/iam/"})
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider))
    await send_download(fleet, {"media_id": "ssrf", "filename": "x.mp4"})

    # When the download worker runs
    await run_downloads(fleet, download)

    # Then the hop is refused before any connection, permanently: FAILED and dead-lettered with the reason
    [(code, reason)] = reasons(await dead_letters(fleet))
    assert code == "UNSAFE_URL"
    assert "169.254.169.254" in reason and "link-local" in reason
    assert (await sync_item(fleet, "ssrf"))["status"] == "FAILED"


async def test_a_name_resolving_to_loopback_is_refused_when_loopback_is_not_allowed(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given loopback not allowed, and a job whose download URL names a host that resolves to 127.0.0.1
    reset(provider, [item("local", 1000)])
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider, allow_loopback_http=False))
    port = provider.url.rsplit(":", 1)[1]
    url = f"https://localhost:{port}/media/local/download"
    await send_download(fleet, {"media_id": "local", "filename": "x.mp4", "download_url": url})

    # When the download worker runs
    await run_downloads(fleet, download)

    # Then the address behind the name is refused: nothing reached the provider
    [(code, reason)] = reasons(await dead_letters(fleet))
    assert code == "UNSAFE_URL"
    assert "localhost (127.0.0.1) is a loopback address" in reason
    assert served_ranges(provider, "local") == []


async def test_an_object_already_synced_is_skipped_without_downloading_again(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given an item synced once
    reset(provider, [item("once", 2000)])
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider))
    job = {"media_id": "once", "filename": "once.mp4", "size": 2000}
    await send_download(fleet, job)
    await run_downloads(fleet, download)
    assert len(served_ranges(provider, "once")) == 1

    # When the same job arrives again (a second sync, a redelivery)
    await send_download(fleet, job)
    await run_downloads(fleet, download)

    # Then the object's metadata matched: no second download, still COMPLETED
    assert len(served_ranges(provider, "once")) == 1
    assert (await sync_item(fleet, "once"))["status"] == "COMPLETED"


async def test_429_with_retry_after_is_honoured_and_the_sync_completes(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a provider that throttles the next two API calls, asking for 0.3 s
    reset(provider, [item("t1", 100), item("t2", 100)], throttle=2, retry_after=0.3)
    await seed_secret(fleet)
    sync, _ = stages(fleet, config(provider))

    # When a sync runs
    report = await sync.sync()

    # Then both throttled calls were retried, and the sync completed
    assert provider.stats()["throttled"] == 2
    assert report.enqueued == 2
    assert len(await queued_downloads(fleet)) == 2


async def test_an_expiring_token_is_refreshed_once_by_concurrent_downloads_and_written_back(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given a token that expires within the 24 h threshold, a slow token endpoint, and 6 downloads at once
    reset(provider, [item(f"c{i}", 1000) for i in range(6)], slow={"token": 0.5})
    await seed_secret(fleet, expires_in=3600)
    _, download = stages(fleet, config(provider))
    for i in range(6):
        await send_download(fleet, {"media_id": f"c{i}", "filename": f"c{i}.mp4", "size": 1000})

    # When the download worker runs them concurrently
    await run_downloads(fleet, download, download_tuning(concurrency=6))

    # Then the provider saw one refresh, every download succeeded, and the new tokens are in the secret
    assert provider.stats()["token_refreshes"] == 1
    assert [(await sync_item(fleet, f"c{i}"))["status"] for i in range(6)] == ["COMPLETED"] * 6
    secret = await fleet.aws.secretsmanager.get_secret_value(SecretId=fleet.settings.name_of(PROVIDER_SECRET))
    stored = json.loads(secret["SecretString"])
    assert stored["refresh_token"] != REFRESH_TOKEN and stored["access_token"] != ACCESS_TOKEN
    assert stored["client_secret"] == CLIENT_SECRET


async def test_a_failed_refresh_alerts_on_sns_and_retries_the_sync_later(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given an expiring token whose refresh the provider refuses, and a queue subscribed to the alerts topic
    reset(provider, [item("x", 100)], token_error="invalid_grant")
    await seed_secret(fleet, expires_in=60)
    tap, subscription = await subscribe_queue(fleet, fleet.settings.name("alerts-tap"))
    sync, _ = stages(fleet, config(provider))

    # When a sync runs
    with pytest.raises(Retry) as failed:
        await sync.sync()

    # Then it is retried later (not dead-lettered at once) and one alert says why, without any secret
    assert failed.value.code == "AUTH_FAILED" and "invalid_grant" in failed.value.reason
    [alert] = await drain_queue(fleet, tap, wait=2)
    envelope = json.loads(alert["Body"])
    assert "token refresh failed" in envelope["Subject"]
    assert json.loads(envelope["Message"])["error"].endswith("invalid_grant")
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, ACCESS_TOKEN):
        assert secret not in alert["Body"]
    await fleet.aws.sns.unsubscribe(SubscriptionArn=subscription)


async def test_tokens_and_the_client_secret_never_reach_the_logs(
    fleet: Services, provider: ProviderProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an expiring token (so a refresh happens) and every logger at DEBUG
    reset(provider, [item("s1", 300_000), item("s2", 6 * MiB)], drop_after={"s2": 1 * MiB})
    await seed_secret(fleet, expires_in=60)
    sync, download = stages(fleet, config(provider))
    caplog.set_level(logging.DEBUG)

    # When a sync and its downloads run (with a refresh, a redirect and a resumed drop)
    await sync.sync()
    await run_downloads(fleet, download)

    # Then no log line, in either format, carries a token or the client secret
    secret = await fleet.aws.secretsmanager.get_secret_value(SecretId=fleet.settings.name_of(PROVIDER_SECRET))
    stored = json.loads(secret["SecretString"])
    secrets = [CLIENT_SECRET, REFRESH_TOKEN, ACCESS_TOKEN, stored["access_token"], stored["refresh_token"]]
    assert stored["access_token"] != ACCESS_TOKEN
    lines = [f.format(r) for r in caplog.records for f in (JsonFormatter(), TextFormatter())]
    assert len(lines) > 10
    assert [s for s in secrets if any(s in line for line in lines)] == []
    assert (await sync_item(fleet, "s2"))["status"] == "COMPLETED"


async def test_the_six_metrics_are_emitted_with_their_dimensions(fleet: Services, provider: ProviderProcess) -> None:
    # Given metrics sent to CloudWatch (the emulator), one good item and one refused one
    namespace = f"{fleet.settings.prefix}Fleet"
    services = dataclasses.replace(fleet, metrics=Metrics("cloudwatch", namespace, cloudwatch=fleet.aws.cloudwatch))
    reset(provider, [item("ok", 6 * MiB), item("bad", 10)], redirect={"bad": "http://10.0.0.7/x"})
    await seed_secret(fleet)
    _, download = stages(services, config(provider))
    await send_download(fleet, {"media_id": "ok", "filename": "ok.mp4"})
    await send_download(fleet, {"media_id": "bad", "filename": "bad.mp4"})

    # When the download worker runs
    await run_downloads(services, download)
    await services.metrics.flush()

    # Then the seed's six metrics are in CloudWatch, with Environment (and ErrorType for failures)
    listed = (await fleet.aws.cloudwatch.list_metrics(Namespace=namespace))["Metrics"]
    found = {m["MetricName"]: {d["Name"]: d["Value"] for d in m.get("Dimensions", [])} for m in listed}
    assert set(media_metrics.NAMES) <= set(found)
    assert found["SyncFailures"] == {"Environment": "local", "ErrorType": "UNSAFE_URL"}
    assert found["BytesTransferred"] == {"Environment": "local"}
    stats = await fleet.aws.cloudwatch.get_metric_statistics(
        Namespace=namespace,
        MetricName="BytesTransferred",
        Dimensions=[{"Name": "Environment", "Value": "local"}],
        StartTime=_minutes_ago(10),
        EndTime=_minutes_ago(-10),
        Period=60,
        Statistics=["Sum"],
    )
    assert sum(p["Sum"] for p in stats["Datapoints"]) == 6 * MiB
    data = await object_bytes(fleet, "videos/ok/ok.mp4")
    assert sha256(data) == sha256_of("ok", 1, 6 * MiB)


def _minutes_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


async def test_a_download_job_that_is_busy_elsewhere_waits_for_the_lease(
    fleet: Services, provider: ProviderProcess
) -> None:
    # Given an item another worker holds (a live lease)
    reset(provider, [item("busy", 100)])
    await seed_secret(fleet)
    _, download = stages(fleet, config(provider))
    assert await download.store.claim("busy", "someone-else", 30.0)
    job = download.parse(json.dumps({"media_id": "busy", "filename": "busy.mp4"}))

    # When a duplicate job for it is handled
    with pytest.raises(Retry) as busy:
        await download.handle(job, context(fleet))

    # Then it retries after the lease instead of starting a second transfer
    assert busy.value.code == "IN_PROGRESS" and busy.value.delay is not None and 20 < busy.value.delay <= 30
    assert served_ranges(provider, "busy") == []
