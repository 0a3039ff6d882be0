"""Operation snapshots persisted through the storage repositories."""

from __future__ import annotations

from inference_service.operations.types import OperationSnapshot
from inference_service.storage.database import Database
from inference_service.storage.records import FINISHED_STATES, Operation, OperationState
from inference_service.storage.repositories import Repositories, run


def _unix_ms(value) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def _snapshot(op: Operation) -> OperationSnapshot:
    return OperationSnapshot(
        id=op.id,
        kind=op.kind,
        state=op.state.value,  # type: ignore[arg-type]
        stage=op.stage,
        target=op.target,
        bytes_done=op.bytes_done,
        bytes_total=op.bytes_total or 0,
        error_message=op.error_message or "",
        created_at_unix_ms=_unix_ms(op.created_at),
        updated_at_unix_ms=_unix_ms(op.updated_at),
        finished_at_unix_ms=_unix_ms(op.finished_at),
    )


class DatabaseOperationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def save(self, snapshot: OperationSnapshot) -> None:
        state = OperationState(snapshot.state)

        def write(repos: Repositories) -> None:
            if repos.operations.get(snapshot.id) is None:
                repos.operations.create(
                    id=snapshot.id,
                    kind=snapshot.kind,
                    target=snapshot.target,
                    state=state,
                    stage=snapshot.stage,
                )
            if state in FINISHED_STATES:
                repos.operations.update_progress(
                    snapshot.id,
                    bytes_done=snapshot.bytes_done,
                    bytes_total=snapshot.bytes_total or None,
                    stage=snapshot.stage,
                )
                repos.operations.finish(snapshot.id, state, snapshot.error_message or None)
            else:
                repos.operations.update_progress(
                    snapshot.id,
                    bytes_done=snapshot.bytes_done,
                    bytes_total=snapshot.bytes_total or None,
                    stage=snapshot.stage,
                    state=state,
                )

        run(self._db, write)

    def get(self, operation_id: str) -> OperationSnapshot | None:
        op = run(self._db, lambda repos: repos.operations.get(operation_id))
        return None if op is None else _snapshot(op)

    def list(self, *, limit: int, offset: int, unfinished_only: bool) -> list[OperationSnapshot]:
        states = (OperationState.PENDING, OperationState.RUNNING) if unfinished_only else ()
        page = run(
            self._db, lambda repos: repos.operations.list(limit=limit, offset=offset, states=states)
        )
        return [_snapshot(op) for op in page.items]

    def fail_interrupted(self) -> int:
        """At start: nothing is running yet, so every unfinished operation was cut short."""

        def work(repos: Repositories) -> int:
            return repos.operations.mark_interrupted(
                op.id for op in repos.operations.list_unfinished()
            )

        return run(self._db, work)
