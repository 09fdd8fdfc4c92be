"""The serve entry point of app services in multi_process mode.

``python -m pytest_unified_launcher._serve --app mod:app --host H --port P --ready-fd N``
imports the app, starts uvicorn on a pre-bound socket, writes ``ready`` to fd N the moment it
listens (so the launcher needs no polling), and stops promptly on SIGTERM or SIGINT. A WSGI app
(Flask, Django's ``get_wsgi_application()``) is detected and served through a2wsgi;
``--interface asgi|wsgi`` says it outright.

``--check`` only imports the app and prints the interface it speaks: ``unified-launcher check``
runs it once per app, each in its own interpreter with the service's environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ._asgi import AppImportError, AppServer, LifespanFailed, bind, import_target, load_app, resolve_app

#: This entry point's exit codes, and what the launcher says for each.
EXIT_IMPORT, EXIT_PORT, EXIT_LIFESPAN = 3, 4, 5
EXIT_MEANINGS = {
    EXIT_IMPORT: "the app could not be imported",
    EXIT_PORT: "its port was already in use",
    EXIT_LIFESPAN: "the app's lifespan startup failed",
}


async def _main(args: argparse.Namespace) -> int:
    try:
        app = load_app(args.app, Path(args.app_dir) if args.app_dir else None, args.interface)
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
    parser.add_argument("--interface", choices=["asgi", "wsgi"], default=None)
    parser.add_argument("--check", action="store_true", help="import the app, print its interface, exit")
    args = parser.parse_args(argv)
    if args.check:
        return _check(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    code = asyncio.run(_main(args))
    # The app's lifespan shutdown has run and the listener is closed: skip the interpreter's
    # own finalisation (tens of ms of module teardown per process, on every stop).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check(args: argparse.Namespace) -> int:
    try:
        _, kind = resolve_app(import_target(args.app, Path(args.app_dir) if args.app_dir else None),
                              args.app, args.interface)
    except AppImportError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_IMPORT
    print(kind, flush=True)
    return 0


#: How ``check`` describes each interface.
DESCRIBE = {"asgi3": "ASGI 3", "asgi2": "ASGI 2 (served through uvicorn's adapter)",
            "wsgi": "WSGI (served through a2wsgi)"}


def check_apps(services: list[Any], app_dir: Path, environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Import every app service in its own interpreter with its own environment, all at once.

    Returns one line per app saying its interface (or why it could not be imported: a module that
    needs a running database at import time is not a config mistake), and the apps that are not
    an app at all (import-string mistakes, neither ASGI nor WSGI), by service name.
    """
    import subprocess

    procs = []
    for svc in services:
        argv = [sys.executable, "-m", "pytest_unified_launcher._serve", "--check", "--app", svc.app,
                "--port", "0", "--app-dir", str(app_dir)]
        interface = getattr(svc, "interface", None)
        if interface:
            argv += ["--interface", interface]
        procs.append((svc, subprocess.Popen(
            argv, env={**environ, **svc.env}, cwd=svc.cwd if Path(svc.cwd).is_dir() else app_dir,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )))
    lines, errors = [], {}
    for svc, proc in procs:
        try:
            out, err = proc.communicate(timeout=svc.startup_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            lines.append(f"app {svc.name}: importing {svc.app} took over {svc.startup_timeout:.0f} s; not checked")
            continue
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        if proc.returncode == 0:
            lines.append(f"app {svc.name}: {svc.app} is {DESCRIBE.get(out.strip(), out.strip())}")
        elif proc.returncode == EXIT_IMPORT:
            errors[svc.name] = last.removeprefix("error: ")
        else:
            lines.append(f"app {svc.name}: importing {svc.app} raised {last}; not checked")
    return lines, errors


if __name__ == "__main__":
    sys.exit(main())
