"""Uploaded training corpora: stored under `data_dir/corpora/<id>/`, listed in the database."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from inference_service.errors import InvalidArgumentError, NotFoundError
from inference_service.storage.database import Database
from inference_service.training.corpus import CORPUS_SUFFIXES, count_documents
from inference_service.training.repository import Corpora
from inference_service.training.types import Corpus

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class CorpusStore:
    def __init__(self, db: Database, data_dir: Path, max_bytes: int) -> None:
        self._db = db
        self._data_dir = data_dir
        self._root = data_dir / "corpora"
        self._max_bytes = max_bytes

    def save(self, name: str, chunks: Iterable[bytes]) -> Corpus:
        """Streams an upload to disk, then checks it parses; nothing is kept on error."""
        name = name.strip()
        if not _SAFE_NAME.fullmatch(name) or Path(name).suffix not in CORPUS_SUFFIXES:
            raise InvalidArgumentError(
                "The corpus name must be a plain file name (letters, digits, '.', '_', '-') "
                f"ending in {' or '.join(CORPUS_SUFFIXES)}.",
                param="name",
            )
        corpus_id = uuid.uuid4().hex
        folder = self._root / corpus_id
        folder.mkdir(parents=True)
        path = folder / name
        size = 0
        try:
            with path.open("wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    self.check_size(size)
                    out.write(chunk)
            documents = count_documents(path)
            if documents == 0:
                raise InvalidArgumentError("The corpus has no text.", param="data")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self._db.run(
            lambda session: Corpora(session).create(
                record_id=corpus_id,
                name=name,
                size_bytes=size,
                documents=documents,
                local_path=path.relative_to(self._data_dir).as_posix(),
            ),
        )

    def check_size(self, size: int) -> None:
        if size > self._max_bytes:
            raise InvalidArgumentError(
                f"The corpus is larger than the {self._max_bytes} bytes allowed "
                "(MILLM_TRAINING_MAX_CORPUS_BYTES).",
                param="data",
            )

    def list(self) -> list[Corpus]:
        return list(self._db.run(lambda session: Corpora(session).list()))

    def get(self, corpus_id: str) -> Corpus:
        record = self._db.run(lambda session: Corpora(session).get(corpus_id))
        if record is None:
            raise NotFoundError(
                f"No corpus has the id '{corpus_id}'; list them with TrainingService.ListCorpora.",
                param="corpus_id",
            )
        return record

    def path(self, corpus_id: str) -> Path:
        return self._data_dir / self.get(corpus_id).local_path

    def delete(self, corpus_id: str) -> None:
        record = self.get(corpus_id)
        shutil.rmtree((self._data_dir / record.local_path).parent, ignore_errors=True)
        self._db.run(lambda session: Corpora(session).delete(corpus_id))
