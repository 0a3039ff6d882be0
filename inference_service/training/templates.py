"""Saved training configs: CRUD, favourites, duplicates, and versioned JSON export/import.

The JSON form is `{"schema": "millm.training_template/v1", "name", "description",
"favourite", "config": {...TrainingConfig fields...}}`; export then import gives
the same template back.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from inference_service.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from inference_service.storage.database import Database, RecordExistsError
from inference_service.training.config import TrainingConfig
from inference_service.training.repository import TrainingTemplates
from inference_service.training.types import TrainingTemplate

SCHEMA = "millm.training_template/v1"
_MAX_NAME = 64


def _check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= _MAX_NAME:
        raise InvalidArgumentError(
            f"A template name has 1 to {_MAX_NAME} characters.", param="name"
        )
    return name


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, name: str, description: str, config: TrainingConfig, favourite: bool
    ) -> TrainingTemplate:
        name = _check_name(name)
        try:
            return self._db.run(
                lambda session: TrainingTemplates(session).create(
                    record_id=uuid.uuid4().hex,
                    name=name,
                    description=description,
                    config=config.to_json(),
                    favourite=favourite,
                ),
            )
        except RecordExistsError:
            raise AlreadyExistsError(
                f"A template named '{name}' exists; pick another name.", param="name"
            ) from None

    def get(self, template_id: str) -> TrainingTemplate:
        record = self._db.run(lambda session: TrainingTemplates(session).get(template_id))
        if record is None:
            raise NotFoundError(f"No training template has the id '{template_id}'.", param="id")
        return record

    def config(self, template_id: str) -> TrainingConfig:
        return TrainingConfig.from_json(self.get(template_id).config)

    def list(self) -> list[TrainingTemplate]:
        return list(self._db.run(lambda session: TrainingTemplates(session).list()))

    def update(
        self,
        template_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        favourite: bool | None = None,
        config: TrainingConfig | None = None,
    ) -> TrainingTemplate:
        self.get(template_id)  # NotFoundError before anything else
        new_name = None if name is None else _check_name(name)
        try:
            self._db.run(
                lambda session: TrainingTemplates(session).update(
                    template_id,
                    name=new_name,
                    description=description,
                    favourite=favourite,
                    config=None if config is None else config.to_json(),
                ),
            )
        except RecordExistsError:
            raise AlreadyExistsError(
                f"A template named '{new_name}' exists; pick another name.", param="name"
            ) from None
        return self.get(template_id)

    def delete(self, template_id: str) -> None:
        if not self._db.run(lambda session: TrainingTemplates(session).delete(template_id)):
            raise NotFoundError(f"No training template has the id '{template_id}'.", param="id")

    def duplicate(self, template_id: str, name: str = "") -> TrainingTemplate:
        source = self.get(template_id)
        return self.create(
            name or f"{source.name} (copy)"[:_MAX_NAME],
            source.description,
            TrainingConfig.from_json(source.config),
            source.favourite,
        )

    def export_json(self, template_id: str) -> str:
        record = self.get(template_id)
        document = {
            "schema": SCHEMA,
            "name": record.name,
            "description": record.description,
            "favourite": record.favourite,
            "config": record.config,
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    def import_json(self, text: str, name: str = "") -> TrainingTemplate:
        document = _parse(text)
        config = TrainingConfig.from_json(document["config"], param="json.config")
        return self.create(
            name or str(document.get("name", "")),
            str(document.get("description", "")),
            config,
            bool(document.get("favourite", False)),
        )


def _parse(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"The template is not JSON: {exc.msg}.", param="json") from None
    except RecursionError:  # nesting deep enough to exhaust the parser's stack
        message = "The template nests too deeply to be one."
        raise InvalidArgumentError(message, param="json") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InvalidArgumentError(
            f'A training template is a JSON object with "schema": "{SCHEMA}".', param="json"
        )
    if not isinstance(document.get("config"), dict):
        raise InvalidArgumentError('The template has no "config" object.', param="json.config")
    return document
