"""The schema migration, run as a launcher `task` before the gateway starts."""

import os

import psycopg


def main() -> None:
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id SERIAL PRIMARY KEY, name TEXT NOT NULL)")
    print("migrated: items")


if __name__ == "__main__":
    main()
