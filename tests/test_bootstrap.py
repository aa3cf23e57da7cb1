"""`fleet bootstrap`: every declared resource, created once; a second run changes nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from shared.bootstrap import Bootstrapper
from shared.registry import discover
from shared.resources import DeadLetters, Queue
from shared.stage import Services
from workers.clips.resources import BEGIN_RULE, CLIPS
from workers.finalizer.resources import FINALIZE
from workers.ingest.resources import FILES, INGEST, LANDING


async def test_bootstrap_creates_everything_then_is_a_no_op(services: Services) -> None:
    # Given an empty account (fresh prefix) and the installed workers' declarations
    registry = discover()

    # When bootstrap runs twice
    first = await Bootstrapper(services.aws, registry).run()
    second = await Bootstrapper(services.aws, registry).run()

    # Then the first run created every declared resource and the second changed nothing
    assert {c.action for c in first} == {"created"}
    assert sorted(c.name for c in first) == sorted(services.settings.name_of(r) for r in registry.resources())
    assert {c.action for c in second} == {"unchanged"}, [c for c in second if c.action != "unchanged"]


async def test_queues_have_their_dlq_with_redrive_after_5_receives(fleet: Services) -> None:
    # Given a bootstrapped fleet
    sqs = fleet.aws.sqs
    queues = [r for r in discover().resources() if isinstance(r, Queue)]
    assert queues
    for queue in queues:
        # When the queue's attributes are read back
        url = (await sqs.get_queue_url(QueueName=fleet.settings.name_of(queue)))["QueueUrl"]
        attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        dlq_url = (await sqs.get_queue_url(QueueName=fleet.settings.name_of(DeadLetters.of(queue))))["QueueUrl"]
        dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))["Attributes"]
        # Then it redrives to its own DLQ after 5 receives
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq_arn["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5


async def test_a_drifted_queue_is_corrected(fleet: Services) -> None:
    # Given someone changed a queue's visibility timeout by hand
    sqs = fleet.aws.sqs
    url = (await sqs.get_queue_url(QueueName=fleet.settings.name_of(FINALIZE)))["QueueUrl"]
    await sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "7"})

    # When bootstrap runs again
    changes = await Bootstrapper(fleet.aws, discover()).run()

    # Then exactly that queue is reported updated and restored
    assert [(c.name, c.action) for c in changes if c.action != "unchanged"] == [
        (fleet.settings.name_of(FINALIZE), "updated")
    ]
    attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"]))["Attributes"]
    assert attrs["VisibilityTimeout"] == "30"


async def test_landing_uploads_notify_the_ingest_queue(fleet: Services) -> None:
    # Given a bootstrapped fleet
    s = fleet.settings
    # When a file lands under incoming/
    await fleet.aws.s3.put_object(Bucket=s.name_of(LANDING), Key="incoming/2026-11-24/a b.ndjson", Body=b"{}\n")

    # Then an S3 ObjectCreated notification reaches fleet-ingest
    sqs = fleet.aws.sqs
    url = (await sqs.get_queue_url(QueueName=s.name_of(INGEST)))["QueueUrl"]
    records = []
    for _ in range(5):
        resp = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            records += json.loads(m["Body"]).get("Records", [])
        if records:
            break
    assert records and records[0]["eventName"].startswith("ObjectCreated")
    # (URL-encoded with + for spaces, as S3 does; moto also encodes the slashes)
    assert unquote_plus(records[0]["s3"]["object"]["key"]) == "incoming/2026-11-24/a b.ndjson"


async def queue_policy(fleet: Services, queue: Queue) -> dict[str, Any] | None:
    sqs = fleet.aws.sqs
    url = (await sqs.get_queue_url(QueueName=fleet.settings.name_of(queue)))["QueueUrl"]
    attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
    return json.loads(attrs["Policy"]) if "Policy" in attrs else None


async def test_queues_let_in_exactly_the_buckets_and_rules_that_send_to_them(fleet: Services) -> None:
    # Given a bootstrapped fleet (AWS refuses a bucket notification to a queue whose policy does not allow
    # S3, and drops a rule's events when the queue does not allow EventBridge; the emulator checks neither)
    s = fleet.settings

    # When the queues' policies are read back
    ingest, clips, finalize = [await queue_policy(fleet, q) for q in (INGEST, CLIPS, FINALIZE)]

    # Then S3 may send to the ingest queue only for the landing bucket, from this account
    assert ingest is not None
    [landing] = ingest["Statement"]
    assert landing["Principal"] == {"Service": "s3.amazonaws.com"}
    assert landing["Action"] == "sqs:SendMessage"
    assert landing["Condition"]["ArnEquals"]["aws:SourceArn"] == f"arn:aws:s3:::{s.name_of(LANDING)}"
    assert landing["Condition"]["StringEquals"]["aws:SourceAccount"].isdigit()
    # And EventBridge may send to the clips queue only for the clip rule on the default bus
    assert clips is not None
    [rule] = clips["Statement"]
    assert rule["Principal"] == {"Service": "events.amazonaws.com"}
    assert rule["Condition"]["ArnEquals"]["aws:SourceArn"].endswith(f":rule/{s.name_of(BEGIN_RULE)}")
    # And a queue nothing sends to from outside has no policy at all
    assert finalize is None


async def test_a_queue_policy_emptied_by_hand_is_put_back(fleet: Services) -> None:
    # Given someone emptied the ingest queue's policy
    sqs = fleet.aws.sqs
    url = (await sqs.get_queue_url(QueueName=fleet.settings.name_of(INGEST)))["QueueUrl"]
    before = await queue_policy(fleet, INGEST)
    await sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": ""})

    # When bootstrap runs again
    changes = await Bootstrapper(fleet.aws, discover()).run()

    # Then the bucket that notifies the queue is reported updated, and the queue's policy is back
    assert [(c.name, c.action) for c in changes if c.action != "unchanged"] == [
        (fleet.settings.name_of(LANDING), "updated")
    ]
    assert await queue_policy(fleet, INGEST) == before


async def test_a_table_from_an_older_release_gets_its_new_index(services: Services) -> None:
    # Given the files table as an older release created it: no index
    spec = FILES
    name = services.settings.name_of(spec)
    await services.aws.dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": spec.hash_key, "KeyType": "HASH"},
            {"AttributeName": spec.range_key or "", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": a, "AttributeType": "S"} for a in (spec.hash_key, spec.range_key or "")
        ],
        BillingMode="PAY_PER_REQUEST",
    )

    # When bootstrap runs
    changes = await Bootstrapper(services.aws, discover()).run([spec])

    # Then the index is added and the table reported updated
    assert [c.action for c in changes] == ["updated"]
    table = (await services.aws.dynamodb.describe_table(TableName=name))["Table"]
    assert [ix["IndexName"] for ix in table["GlobalSecondaryIndexes"]] == [ix.name for ix in spec.indexes]
    assert [c.action for c in await Bootstrapper(services.aws, discover()).run([spec])] == ["unchanged"]
