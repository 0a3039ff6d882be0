from __future__ import annotations

import threading

from inference_service.operations.repository import Operations
from inference_service.operations.types import OperationKind
from inference_service.storage import Database

UPDATES = 150


def test_two_threads_update_progress(database: Database) -> None:
    with database.session() as session:
        Operations(session).create(id="a", kind=OperationKind.MODEL_DOWNLOAD, target="a")
        Operations(session).create(id="b", kind=OperationKind.MODEL_DOWNLOAD, target="b")
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(op_id: str) -> None:
        try:
            start.wait()
            for done in range(1, UPDATES + 1):
                with database.session() as session:
                    # Write then read in one transaction: on SQLite the write lock is
                    # taken at BEGIN, so this waits instead of failing with SQLITE_BUSY.
                    Operations(session).update_progress(op_id, bytes_done=done, bytes_total=UPDATES)
                    op = Operations(session).get(op_id)
                    assert op is not None and op.bytes_done == done
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for op_id in ("a", "b"):
        op = database.run(lambda session, i=op_id: Operations(session).get(i))
        assert op is not None
        assert (op.bytes_done, op.bytes_total) == (UPDATES, UPDATES)
