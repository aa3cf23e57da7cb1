"""`python -m shared.moto_server -H 127.0.0.1 -p PORT`: moto's server, with fleet's patch applied first
(see shared/emulator.py). The embedded emulator's subprocess mode runs this instead of `moto.server`."""

from __future__ import annotations

from shared.emulator import patch_moto

if __name__ == "__main__":
    from moto.server import main

    patch_moto()
    main()
