"""A conditional write whose reply was lost: it took effect, botocore retried it, and the retry failed the
condition its own first attempt changed. `shared.errors.written` recognises the writer's own success."""

from __future__ import annotations

import uuid

from shared.errors import owned, written
from shared.stage import Services
from tests.faultproxy import FaultProxy, Rule, amz_target
from tests.helpers import through
from workers.ingest.layout import file_item_key, manifest_item_key
from workers.ingest.resources import FILES
from workers.ingest.store import CLAIMING, FileRef, FilesTable, ManifestRecord, iso

PUT = amz_target("DynamoDB_20120810.PutItem")
UPDATE = amz_target("DynamoDB_20120810.UpdateItem")


async def test_a_put_whose_reply_was_lost_is_recognised_as_its_own(fleet: Services, aws_endpoint: str) -> None:
    # Given a conditional put whose first reply is lost after DynamoDB applied it
    table = fleet.settings.name_of(FILES)
    with FaultProxy(aws_endpoint) as proxy:
        rule = proxy.add(Rule("lost reply", PUT, times=1, action="lose_reply"))
        async with through(proxy, fleet) as proxied:
            token = uuid.uuid4().hex

            # When it is written with a `mine` check (botocore retries it after the lost reply)
            ok = await written(
                proxied.aws.dynamodb.put_item,
                mine=owned("owner", token),
                TableName=table,
                Item={"date_prefix": {"S": "d"}, "file_key": {"S": "k1"}, "owner": {"S": token}},
                ConditionExpression="attribute_not_exists(file_key)",
            )

            # Then the retry's failed condition was recognised as the first attempt's success
            assert ok and len(rule.hits) == 2

            # And, as a control, the same write by someone else is still refused
            assert not await written(
                proxied.aws.dynamodb.put_item,
                mine=owned("owner", "someone-else"),
                TableName=table,
                Item={"date_prefix": {"S": "d"}, "file_key": {"S": "k1"}, "owner": {"S": "someone-else"}},
                ConditionExpression="attribute_not_exists(file_key)",
            )


async def test_without_the_check_a_lost_reply_looks_like_a_lost_race(fleet: Services, aws_endpoint: str) -> None:
    # Given the same lost reply, written without `mine`
    table = fleet.settings.name_of(FILES)
    with FaultProxy(aws_endpoint) as proxy:
        proxy.add(Rule("lost reply", PUT, times=1, action="lose_reply"))
        async with through(proxy, fleet) as proxied:
            ok = await written(
                proxied.aws.dynamodb.put_item,
                TableName=table,
                Item={"date_prefix": {"S": "d"}, "file_key": {"S": "k2"}},
                ConditionExpression="attribute_not_exists(file_key)",
            )
    # Then the writer would wrongly believe someone else won (the bug the check closes)
    assert not ok
    item = await fleet.aws.dynamodb.get_item(TableName=table, Key={"date_prefix": {"S": "d"}, "file_key": {"S": "k2"}})
    assert "Item" in item


async def test_ingest_opens_a_manifest_and_adds_candidates_once_despite_lost_replies(
    fleet: Services, aws_endpoint: str
) -> None:
    # Given ingest's manifest record writes losing their first reply each
    record = ManifestRecord(
        manifest_id=str(uuid.uuid4()),
        date_prefix="2026-11-27",
        created_at=iso(),
        state=CLAIMING,
        candidates=[ref(i) for i in range(2)],
        files=[],
    )
    extra = [ref(i) for i in range(2, 4)]
    with FaultProxy(aws_endpoint) as proxy:
        put = proxy.add(Rule("lost put", PUT, times=1, action="lose_reply"))
        update = proxy.add(Rule("lost update", UPDATE, times=1, action="lose_reply"))
        async with through(proxy, fleet) as proxied:
            store = FilesTable(proxied.aws.dynamodb, proxied.settings.name_of(FILES))

            # When the record is opened and two more candidates are added
            opened = await store.open_record(record, "me", lease_until=4_000_000_000)
            added = await store.add_candidates(record, "me", extra)

    # Then both writes count as done (no "tick failed"), each retried once
    assert opened and added
    assert (len(put.hits), len(update.hits)) == (2, 2)
    # And each candidate is listed once, though the append was sent twice
    key = store.key(record.date_prefix, manifest_item_key(record.manifest_id))
    item = (await fleet.aws.dynamodb.get_item(TableName=store.table, Key=key))["Item"]
    assert [c["M"]["key"]["S"] for c in item["candidates"]["L"]] == ["k0", "k1", "k2", "k3"]


def ref(i: int) -> FileRef:
    return FileRef(file_item_key("landing", f"k{i}", "etag"), "landing", f"k{i}", 1, "etag")
