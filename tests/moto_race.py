"""A moto server whose SQS delete loop yields the GIL at every message, so the unlocked-rebuild race of
`Queue.delete_message` (shared/emulator.py) shows up every time instead of once in a while.

    python -m tests.moto_race stock|patched -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import sys
import time

from moto.server import main
from moto.sqs.models import Message

from shared.emulator import patch_moto


def widen_the_race() -> None:
    had_receipt_handle = Message.had_receipt_handle

    def yielding(self: Message, receipt_handle: str) -> bool:
        time.sleep(0)  # let another request's thread run in the middle of the list rebuild
        return bool(had_receipt_handle(self, receipt_handle))

    Message.had_receipt_handle = yielding  # type: ignore[method-assign]


if __name__ == "__main__":
    variant, *argv = sys.argv[1:]
    widen_the_race()
    if variant == "patched":
        assert patch_moto()
    main(argv)
