"""Writes pairs in a tight loop until killed; prints each committed iteration.

`python -m tests.unit.storage.crash_writer URL`. Iteration i inserts operation
`op-<i>` and sets model record `crash@main`'s size_bytes to i in one transaction,
so after any crash: size_bytes == number of operations.
"""

from __future__ import annotations

import sys
from pathlib import Path

from inference_service.models.repository import ModelRecords
from inference_service.models.types import ModelFormat
from inference_service.operations.repository import Operations
from inference_service.storage import Database

DATA = Path("/data")


def main() -> None:
    db = Database(sys.argv[1])
    i = 0
    while True:
        i += 1
        with db.session() as session:
            Operations(session).create(id=f"op-{i:08d}", kind="training", target="crash@main")
            ModelRecords(session, DATA).upsert(
                repo_id="crash", revision="main", format=ModelFormat.GGUF, local_dir=DATA / "crash",
                size_bytes=i,
            )  # fmt: skip
        print(i, flush=True)


if __name__ == "__main__":
    main()
