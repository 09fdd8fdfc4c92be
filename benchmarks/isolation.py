"""A fresh PostgreSQL database state for each of 50 tests: this launcher vs pytest-postgresql.

    .venv/bin/pip install pytest-postgresql      # the peer (not a dependency of this project)
    .venv/bin/python benchmarks/isolation.py [--rounds 5] [--tests 50]

One PostgreSQL server (fsync off, as both projects' test setups would run it) serves every
contestant; each runs the same 50 tests, which insert three rows into ``items`` and assert that
exactly those are there, so a state left from another test or worker fails them:

  launcher-truncate   reset = "resets:truncate" (TRUNCATE items RESTART IDENTITY in the worker's
                      own database, made once per worker by a scope = "worker" task)
  launcher-template   reset = "resets:from_template" (the worker's database dropped and created
                      again from a migrated template: what pytest-postgresql does)
  pytest-postgresql   its ``postgresql_noproc`` + ``postgresql`` fixtures: a database created from
                      its template for each test and dropped after it

"per-test reset" is each test's setup plus teardown time as pytest reports it (the reset and the
connection the test gets, both sides), serial run; "-n 2 run" is the wall time of the whole
`pytest -n 2` of the 50 tests. Rounds are interleaved, so machine noise hits all alike. Prints
one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
sys.path.insert(0, str(HERE))
from _scratch import scratch_dir

SCHEMA = "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT NOT NULL)"

#: Records each test's setup and teardown durations (both contestants load it the same way).
TIMING_PLUGIN = """
import json, os

def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        name = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["BENCH_TIMINGS"], name + ".jsonl"), "a") as fh:
            fh.write(json.dumps([report.nodeid, report.when, report.duration]) + "\\n")
"""

TEST_BODY = """
@pytest.mark.parametrize("n", range({tests}))
{marker}def test_items(conn, n):
    for i in range(3):
        conn.execute("INSERT INTO items (name) VALUES (%s)", (f"item {{n}}.{{i}}",))
    assert conn.execute("SELECT min(id), count(*) FROM items").fetchone() == (1, 3)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(program: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"))
    return str(found[-1]) if found else shutil.which(program) or program


def start_server(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """initdb and postgres, as the `postgres` user when we are root (PostgreSQL refuses root)."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(folder, pw.pw_uid, pw.pw_gid)
        for parent in folder.parents:  # our mkdtemp folders are 0700: let the server user through
            if parent == Path(tempfile.gettempdir()):
                break
            parent.chmod(0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run([*as_user, pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N", "-E",
                    "UTF8", "--locale=C"], check=True, stdout=subprocess.DEVNULL)
    server = subprocess.Popen([*as_user, pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
                               "-h", "127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                               "-c", "synchronous_commit=off", "-c", "max_connections=100"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("PostgreSQL did not start")
        time.sleep(0.05)
    return server


def launcher_project(folder: Path, port: int, tests: int, reset: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:{port}"
    (folder / "launcher.toml").write_text(textwrap.dedent(f"""
        [launcher.test_env]
        DATABASE_URL = "{url}/app_${{worker}}"
        [services.database]            # the server every contestant uses
        url = "{url}/postgres"
        reset = "resets:{reset}"
        [services.worker_db]           # each worker's own database, once
        command = ["{PY}", "make_db.py", "app_${{worker}}"]
        task = true
        scope = "worker"
        depends_on = ["database"]
    """))
    (folder / "make_db.py").write_text(textwrap.dedent(f"""
        import sys, psycopg
        from psycopg import sql
        name = sys.argv[1]
        with psycopg.connect("{url}/postgres", autocommit=True) as conn:
            for db in (name, name + "_tmpl"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {{}} WITH (FORCE)").format(sql.Identifier(db)))
            conn.execute(sql.SQL("CREATE DATABASE {{}}").format(sql.Identifier(name + "_tmpl")))
        with psycopg.connect("{url}/" + name + "_tmpl", autocommit=True) as conn:
            conn.execute("{SCHEMA}")
        with psycopg.connect("{url}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {{}} TEMPLATE {{}}").format(sql.Identifier(name),
                                                                           sql.Identifier(name + "_tmpl")))
    """))
    (folder / "resets.py").write_text(textwrap.dedent(f"""
        import psycopg
        from psycopg import sql

        def truncate(handle, worker):
            with psycopg.connect("{url}/app_" + worker, autocommit=True) as conn:
                conn.execute("TRUNCATE items RESTART IDENTITY")

        def from_template(handle, worker):
            name = "app_" + worker
            with psycopg.connect("{url}/postgres", autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {{}} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {{}} TEMPLATE {{}}").format(sql.Identifier(name),
                                                                               sql.Identifier(name + "_tmpl")))
    """))
    (folder / "conftest.py").write_text(TIMING_PLUGIN + textwrap.dedent("""
        import os, psycopg, pytest

        @pytest.fixture
        def conn(services):
            with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as connection:
                yield connection
    """))
    (folder / "test_items.py").write_text("import pytest\n" + TEST_BODY.format(
        tests=tests, marker='@pytest.mark.services("worker_db", fresh=True)\n'))


def peer_project(folder: Path, port: int, tests: int) -> None:
    (folder / "conftest.py").write_text(TIMING_PLUGIN + textwrap.dedent(f"""
        import pytest
        from pytest_postgresql import factories

        def schema(host, port, user, dbname, password, **_):
            import psycopg
            with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password) as conn:
                conn.execute("{SCHEMA}")

        postgresql_noproc = factories.postgresql_noproc(host="127.0.0.1", port={port}, user="postgres",
                                                        dbname="peer", load=[schema])
        postgresql = factories.postgresql("postgresql_noproc")

        @pytest.fixture
        def conn(postgresql):
            postgresql.autocommit = True
            return postgresql
    """))
    (folder / "test_items.py").write_text("import pytest\n" + TEST_BODY.format(tests=tests, marker=""))


def run(folder: Path, *args: str) -> tuple[float, list[float]]:
    """Wall seconds of one pytest run, and each test's setup+teardown seconds."""
    timings = folder / "timings"
    shutil.rmtree(timings, ignore_errors=True)
    timings.mkdir()
    env = {**os.environ, "BENCH_TIMINGS": str(timings)}
    t0 = time.perf_counter()
    result = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                            cwd=folder, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{folder.name}: pytest {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    per_test: dict[str, float] = {}
    for path in timings.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            nodeid, _, seconds = json.loads(line)
            per_test[nodeid] = per_test.get(nodeid, 0.0) + seconds
    return wall, list(per_test.values())


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=50)
    args = parser.parse_args()
    root = scratch_dir()
    port = free_port()
    (root / "pg").mkdir()
    server = start_server(root / "pg", port)
    contestants = {}
    try:
        for name, make in (("launcher-truncate", lambda f: launcher_project(f, port, args.tests, "truncate")),
                           ("launcher-template", lambda f: launcher_project(f, port, args.tests, "from_template")),
                           ("pytest-postgresql", lambda f: peer_project(f, port, args.tests))):
            folder = root / name
            folder.mkdir()
            make(folder)
            contestants[name] = folder
        serial: dict[str, list[float]] = {n: [] for n in contestants}
        parallel: dict[str, list[float]] = {n: [] for n in contestants}
        for _ in range(args.rounds):
            for name, folder in contestants.items():
                serial[name] += run(folder, "-p", "no:xdist")[1]
                parallel[name].append(run(folder, "-n", "2")[0])
    finally:
        server.terminate()
        server.wait(30)
    peer = p95(serial["pytest-postgresql"])
    print(f"{args.tests} tests x {args.rounds} rounds; per-test reset = setup + teardown of each test (serial runs)\n")
    print("| contestant | per-test reset P50 | per-test reset P95 | P95 vs pytest-postgresql | -n 2 run median | -n 2 run min |")
    print("|---|---|---|---|---|---|")
    for name in contestants:
        values = serial[name]
        print(f"| {name} | {statistics.median(values) * 1000:.1f} ms | {p95(values) * 1000:.1f} ms | "
              f"{p95(values) / peer:.2f}x | {statistics.median(parallel[name]):.2f} s | {min(parallel[name]):.2f} s |")


if __name__ == "__main__":
    main()
