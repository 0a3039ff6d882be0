"""`python -m inference_service.storage revision -m MESSAGE`: autogenerate a migration.

Diffs `tables.py` against a scratch SQLite database upgraded to head, so it needs no
running server and no alembic.ini.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from alembic import command

from inference_service.storage.database import (
    MIGRATIONS_DIR,
    Database,
    alembic_config,
    resolve_url,
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m inference_service.storage")
    sub = parser.add_subparsers(dest="command", required=True)
    revision = sub.add_parser("revision", help="autogenerate a migration from tables.py")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--empty", action="store_true", help="write an empty script")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        url = resolve_url("", Path(scratch))
        database = Database(url)
        database.migrate()
        database.close()
        # Sequential ids keep the versions folder in upgrade order.
        rev_id = f"{len(list(MIGRATIONS_DIR.glob('versions/[0-9]*.py'))) + 1:04d}"
        command.revision(
            alembic_config(url), message=args.message, autogenerate=not args.empty, rev_id=rev_id
        )


if __name__ == "__main__":
    main()
