"""The `fleet.*` SQS message attributes, named once: the runtime writes them, `fleet dlq` and the tests read them.

On a dead letter:
- `fleet.error`, `fleet.error-code`: why it failed (a short reason, a code);
- `fleet.worker`, `fleet.source-queue`: who gave up on it, and where it came from;
- `fleet.attempts`: handler failures that counted (releases at shutdown never count);
- `fleet.source-message-id`: the id of the message as first sent, so a message dead-lettered twice (a
  delete that failed after the DLQ send) is shown and redriven once.

On a message the runtime re-sends when it releases it at shutdown:
- `fleet.failures`: handler failures before this copy (SQS's receive count starts again at 1);
- `fleet.origin-id`: the first copy's message id.
"""

from __future__ import annotations

ERROR = "fleet.error"
ERROR_CODE = "fleet.error-code"
WORKER = "fleet.worker"
ATTEMPTS = "fleet.attempts"
SOURCE_QUEUE = "fleet.source-queue"
SOURCE_MESSAGE_ID = "fleet.source-message-id"

FAILURES = "fleet.failures"
ORIGIN_ID = "fleet.origin-id"
JOB_ID = "fleet.job-id"

DEAD_LETTER = (ERROR, ERROR_CODE, WORKER, ATTEMPTS, SOURCE_QUEUE, SOURCE_MESSAGE_ID)
RUNTIME = (*DEAD_LETTER, FAILURES, ORIGIN_ID)  # stripped when a dead letter is redriven

MAX_ATTRIBUTES = 10  # SQS's limit per message
