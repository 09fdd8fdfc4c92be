"""A plain TCP server used as a `command` service: python tcp_server.py PORT [--ignore-term] [--fork] [--daemon-child] [--term-file F]."""

import os
import signal
import socket
import sys
import time

port = int(sys.argv[1])
if "--term-file" in sys.argv:  # note a graceful stop (SIGTERM) in this file, then exit
    term_file = sys.argv[sys.argv.index("--term-file") + 1]

    def _noted_exit(signum: int, frame: object) -> None:
        with open(term_file, "w") as fh:
            fh.write("stopped by SIGTERM\n")
        os._exit(0)

    signal.signal(signal.SIGTERM, _noted_exit)
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "--delay" in sys.argv:
    time.sleep(float(sys.argv[sys.argv.index("--delay") + 1]))
if "--fork" in sys.argv and os.fork() == 0:
    # The grandchild: keeps running after its parent is gone, unless the group is killed.
    while True:
        time.sleep(1)
if "--daemon-child" in sys.argv and os.fork() == 0:
    # A daemon the classic way: a new session, a second fork, the middle process exits; the
    # daemon is then no descendant of the service (init adopts it), found only by its marker.
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # --term-file notes the service's own stop only
    if os.fork() == 0:
        while True:
            time.sleep(1)
    os._exit(0)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen(16)
print(f"listening on {sock.getsockname()[1]}", flush=True)
while True:
    conn, _ = sock.accept()
    conn.close()
