"""Persistence: SQLAlchemy tables, repositories returning domain records, migrations."""

from inference_service.storage.database import Database, resolve_url
from inference_service.storage.records import (
    ModelFile,
    ModelFormat,
    ModelRecord,
    ModelState,
    Operation,
    OperationKind,
    OperationPage,
    OperationState,
    model_record_id,
)
from inference_service.storage.repositories import (
    INTERRUPTED_MESSAGE,
    ModelRecords,
    Operations,
    RecordNotFoundError,
    Repositories,
    run,
    transaction,
)

__all__ = [
    "INTERRUPTED_MESSAGE",
    "Database",
    "ModelFile",
    "ModelFormat",
    "ModelRecord",
    "ModelRecords",
    "ModelState",
    "Operation",
    "OperationKind",
    "OperationPage",
    "OperationState",
    "Operations",
    "RecordNotFoundError",
    "Repositories",
    "model_record_id",
    "resolve_url",
    "run",
    "transaction",
]
