"""The serve entry point of app services in multi_process mode.

``python -m pytest_unified_launcher._serve --app mod:app --host H --port P --ready-fd N``
imports the app, starts uvicorn on a pre-bound socket, writes ``ready`` to fd N the moment it
listens (so the launcher needs no polling), and stops promptly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from ._asgi import AppImportError, AppServer, LifespanFailed, bind, load_app

#: This entry point's exit codes, and what the launcher says for each.
EXIT_IMPORT, EXIT_PORT, EXIT_LIFESPAN = 3, 4, 5
EXIT_MEANINGS = {
    EXIT_IMPORT: "the app could not be imported",
    EXIT_PORT: "its port was already in use",
    EXIT_LIFESPAN: "the app's lifespan startup failed",
}


async def _main(args: argparse.Namespace) -> int:
    try:
        app = load_app(args.app, Path(args.app_dir) if args.app_dir else None)
    except AppImportError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_IMPORT
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"error: port {args.port} already in use ({exc.strerror})", file=sys.stderr, flush=True)
        return EXIT_PORT
    server = AppServer(app, args.host, args.port, log_level=args.log_level)
    try:
        await server.start(sock)
    except LifespanFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_LIFESPAN
    where = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    print(f"serving {args.app} on {where}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready_fd is not None:
        try:
            os.write(args.ready_fd, b"ready\n")
            os.close(args.ready_fd)
        except OSError:
            pass
    await stop.wait()
    await server.stop()
    print(f"stopped {args.app}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_unified_launcher._serve")
    parser.add_argument("--app", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app-dir", default=None)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    code = asyncio.run(_main(args))
    # The app's lifespan shutdown has run and the listener is closed: skip the interpreter's
    # own finalisation (tens of ms of module teardown per process, on every stop).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
