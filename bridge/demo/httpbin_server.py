"""Real httpbin (the PyPI package) served by waitress on 127.0.0.1, port chosen by the kernel.

Run as ``python -m bridge.demo.httpbin_server``: prints one JSON line ``{"port": N}`` on stdout once
listening, serves until SIGTERM/SIGINT, then closes its socket and exits 0. A subprocess (not a thread)
so the demo's supervisor can stop it like every other peer and httpbin's import cost stays out of the
demo process.
"""

from __future__ import annotations

import json
import signal
import sys
from types import FrameType


def main() -> int:
    from httpbin import app  # noqa: PLC0415 - heavy import only in the child
    from waitress.server import create_server  # noqa: PLC0415

    server = create_server(app, host="127.0.0.1", port=0, threads=4, ident="httpbin")

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(json.dumps({"port": int(server.effective_port)}), flush=True)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
