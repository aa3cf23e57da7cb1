"""`python -m workers.media_sync.provider [--port 8765] [--items 20 --size 8MiB] [--rate 50MB/s]`."""

from __future__ import annotations

import sys

from workers.media_sync.provider.command import main

if __name__ == "__main__":
    sys.exit(main())
