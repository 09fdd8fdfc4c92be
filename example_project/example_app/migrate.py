"""The schema migration, run as a launcher `task` before the gateway starts.

``--database NAME`` migrates a database of its own, created (again) first: the `worker_db`
task gives each xdist worker ``app_gw0``, ``app_gw1``, ... so their tests never share rows.
"""

import argparse
import os

import psycopg
from psycopg import sql

SCHEMA = "CREATE TABLE IF NOT EXISTS items (id SERIAL PRIMARY KEY, name TEXT NOT NULL)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", help="create this database (dropping an old one) and migrate it")
    args = parser.parse_args()
    url = os.environ["DATABASE_URL"]
    if args.database:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.database)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.database)))
        url = url.rsplit("/", 1)[0] + "/" + args.database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
    print(f"migrated: items in {url.rsplit('/', 1)[1]}")


if __name__ == "__main__":
    main()
