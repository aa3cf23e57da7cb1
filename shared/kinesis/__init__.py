"""A KCL-style Kinesis consumer shared by stream workers: shard leases and checkpoints in `fleet-leases`
(each a conditional write), renewal, expiry and take-over, balancing, hand-back on SIGTERM, checkpoints only
after a batch's effects are durable, and reshard discovery with parents read before children.

    consumer = await StreamConsumer.create(stage, services, stream=EVENTS, tuning=tuning, dead_letters=QUEUE)
    stats = await consumer.run()   # until stop(); `shared.app.run_workers` does this for a declared stream

The stage implements `StreamStage` (records.py). Nothing here names a worker.
"""

from __future__ import annotations

from shared.declaration import Uses, uses
from shared.resources import LEASES, Stream

# What the consumer itself calls: a worker that consumes a stream declares these (`WorkerSpec.uses`).
STREAM_READ_ACTIONS = (
    "kinesis:DescribeStreamSummary",  # the stream's ARN, which GetRecords names
    "kinesis:ListShards",
    "kinesis:GetShardIterator",
    "kinesis:GetRecords",
)
LEASE_ACTIONS = ("dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem")


def consumer_uses(stream: Stream) -> tuple[Uses, ...]:
    """The permissions the stream consumer needs on `stream` and on the lease table."""
    return (uses(stream, *STREAM_READ_ACTIONS), uses(LEASES, *LEASE_ACTIONS))
