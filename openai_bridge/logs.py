"""Logging set-up: stdlib logging, optional JSON lines, the request id on every line."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


# A secret in a query string (`?api_key=...`, `&token=...`): uvicorn logs every request's
# path with its query, and old clients or a mistyped URL may still put a key there.
_SECRET_QUERY = re.compile(r"([?&](?:api_key|key|token|access_token)=)[^&\s\"'#]*", re.IGNORECASE)
REDACTED = "[REDACTED]"
# Loggers whose records carry request URLs, filtered where they are made: a filter on
# a handler only sees records that reach that handler (not pytest's caplog, say).
_URL_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "openai_bridge")


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(rf"\1{REDACTED}", text)


def _redact_value(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactSecretsFilter(logging.Filter):
    """Replaces key-looking query parameters in a record's message and arguments.

    The arguments are redacted one by one rather than the record formatted here:
    uvicorn's access formatter unpacks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _redact_value(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_value(v) for v in record.args)
        return True


def install_redaction() -> None:
    """Adds the filter to the loggers that log URLs (once each)."""
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecretsFilter) for f in logger.filters):
            logger.addFilter(RedactSecretsFilter())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(level: str, as_json: bool) -> None:
    """Configures the root logger once, at process start."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    # On the handler too: it sees every record that propagates, from any logger.
    handler.addFilter(RedactSecretsFilter())
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    install_redaction()
