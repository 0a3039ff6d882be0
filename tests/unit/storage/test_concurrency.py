from __future__ import annotations

import threading

from inference_service.storage import Database, OperationKind, run, transaction

UPDATES = 150


def test_two_threads_update_progress(database: Database) -> None:
    with transaction(database) as tx:
        tx.operations.create(id="a", kind=OperationKind.MODEL_DOWNLOAD, target="a")
        tx.operations.create(id="b", kind=OperationKind.MODEL_DOWNLOAD, target="b")
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(op_id: str) -> None:
        try:
            start.wait()
            for done in range(1, UPDATES + 1):
                with transaction(database) as tx:
                    # Write then read in one transaction: on SQLite the write lock is
                    # taken at BEGIN, so this waits instead of failing with SQLITE_BUSY.
                    tx.operations.update_progress(op_id, bytes_done=done, bytes_total=UPDATES)
                    op = tx.operations.get(op_id)
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
        op = run(database, lambda tx, i=op_id: tx.operations.get(i))
        assert op is not None
        assert (op.bytes_done, op.bytes_total) == (UPDATES, UPDATES)
