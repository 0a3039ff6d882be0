"""What every domain's repository does with its one table: read rows back as the
domain's own type, and update or delete a row by its key."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, delete, inspect, update
from sqlalchemy.orm import Session

from inference_service.storage.database import RecordNotFoundError, rowcount
from inference_service.storage.tables import TableBase

RowT = TypeVar("RowT", bound=TableBase)
T = TypeVar("T")


class TableRepository(ABC, Generic[RowT, T]):
    """One table's queries in the caller's session (the caller owns the transaction).
    Rows never leave: every read comes back as the domain's type via `_from_row`, so
    the domains share no SQLAlchemy objects and each repository says only what is its
    own (its columns, orderings and writes)."""

    row_type: type[RowT]
    noun: ClassVar[str]  # names a row in RecordNotFoundError, e.g. "SAE record"

    def __init__(self, session: Session) -> None:
        self._session = session

    @abstractmethod
    def _from_row(self, row: RowT) -> T: ...

    def get(self, key: str) -> T | None:
        # populate_existing: an UPDATE statement earlier in the session bypassed the
        # identity map, so a row it already holds may be stale.
        row = self._session.get(self.row_type, key, populate_existing=True)
        return None if row is None else self._from_row(row)

    def _first(self, statement: Select[Any]) -> T | None:
        row = self._session.scalars(statement).first()
        return None if row is None else self._from_row(row)

    def _all(self, statement: Select[Any]) -> tuple[T, ...]:
        return tuple(self._from_row(row) for row in self._session.scalars(statement))

    def _stored(self, key: str) -> T:
        """The row just written, read back."""
        self._session.flush()
        record = self.get(key)
        assert record is not None
        return record

    def _update(self, key: str, values: Mapping[str, object]) -> None:
        statement = update(self.row_type).where(self._key_column == key).values(values)
        if rowcount(self._session, statement) == 0:
            raise RecordNotFoundError(f"{self.noun} {key!r} not found")

    def _delete(self, key: str) -> bool:
        """False if there was no such row."""
        statement = delete(self.row_type).where(self._key_column == key)
        return rowcount(self._session, statement) > 0

    @property
    def _key_column(self) -> ColumnElement[Any]:
        (column,) = inspect(self.row_type).primary_key
        return column
