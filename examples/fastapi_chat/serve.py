"""Run the service: ``python examples/fastapi_chat/serve.py [--port 8000]``.

With ``TURNSTORE_DSN`` set it serves that database; otherwise it starts a throwaway
embedded PostgreSQL (the ``embedded`` extra), which is deleted when the service stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

__all__ = ["main"]


def main() -> None:
    import uvicorn

    from turnstore.embedded import embedded_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    def serve() -> None:
        uvicorn.run("fastapi_chat.app:create_app", factory=True, host=args.host, port=args.port)

    if os.environ.get("TURNSTORE_DSN"):
        serve()
        return
    # uvicorn re-raises the SIGTERM it handled once it has shut down: make that an exit
    # that unwinds, so the embedded server below is stopped and deleted.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with embedded_server() as dsn:
        print(f"embedded PostgreSQL: {dsn}", flush=True)
        os.environ["TURNSTORE_DSN"] = dsn
        serve()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    # Run as a script: make the package importable from its parent directory.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
