"""Persistence: the database, its SQLAlchemy tables and migrations. Each domain owns
its repository (`profiles/repository.py`, `sae/repository.py`, ...), built on
`repository.TableRepository`."""

from inference_service.storage.database import (
    Database,
    RecordExistsError,
    RecordNotFoundError,
    resolve_url,
)

__all__ = ["Database", "RecordExistsError", "RecordNotFoundError", "resolve_url"]
