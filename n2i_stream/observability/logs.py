"""Structured logs: one line per event, as text or as JSON, set up once by the entry point.

Text lines read ``2026-05-04T12:00:00.123Z INFO n2i_stream.service.service: message key=value``
(``extra={...}`` fields appended as ``key=value``); JSON lines carry the same as an object
(``time``, ``level``, ``logger``, ``thread``, ``message``, the extra fields and, for an
exception, ``exception`` with the traceback). Line breaks inside a message or traceback are
escaped in text lines, so every event is one line for journald, grep and log shippers alike.
Only the process entry point (``n2i-stream serve``) calls :func:`setup_logging`; library
modules just log (STYLE: no loggers configured inside constructors).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import IO, Any, Literal

__all__ = ["JsonFormatter", "TextFormatter", "setup_logging"]

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...`` on one line (UTC times)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}: {record.getMessage()}"]
        parts += [f"{k}={v}" for k, v in _extras(record).items()]
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        return " ".join(parts).replace("\\", "\\\\").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, thread, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            event.setdefault(key, value)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


def setup_logging(
    level: Literal["debug", "info", "warning", "error"] | int = "info",
    format: Literal["text", "json"] = "text",
    file: str | os.PathLike[str] | None = None,
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to standard error (or ``stream``, or
    appended to ``file``, reopened when rotated) as text or JSON lines; replaces the root
    logger's handlers. Returns the handler installed."""
    if file is not None:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler._n2i_installed = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if getattr(old, "_n2i_installed", False):
            old.close()  # ours (a file, perhaps): release it; others belong to their owners
    root.addHandler(handler)
    root.setLevel(LEVELS[level] if isinstance(level, str) else level)
    logging.captureWarnings(True)
    return handler
