"""The operations manager's store over the database (`repository.Operations`)."""

from __future__ import annotations

from inference_service.operations.repository import Operations
from inference_service.operations.types import UNFINISHED_STATES, OperationSnapshot
from inference_service.storage.database import Database


class DatabaseOperationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, snapshot: OperationSnapshot) -> None:
        self._db.run(lambda session: Operations(session).save(snapshot))

    def get(self, operation_id: str) -> OperationSnapshot | None:
        return self._db.run(lambda session: Operations(session).get(operation_id))

    def list(self, *, limit: int, offset: int, unfinished_only: bool) -> list[OperationSnapshot]:
        states = UNFINISHED_STATES if unfinished_only else ()
        page = self._db.run(
            lambda session: Operations(session).list(limit=limit, offset=offset, states=states)
        )
        return list(page.items)

    def fail_interrupted(self) -> int:
        """At start: nothing is running yet, so every unfinished operation was cut short."""

        def work(session) -> int:
            operations = Operations(session)
            return operations.mark_interrupted(op.id for op in operations.list_unfinished())

        return self._db.run(work)
