"""Structured log set-up shared by every command of the project.

The device plugin, the runtime's server, the operator's helpers and the local cluster all log the
same way, so one log pipeline (or one person with ``jq``) reads them all: plain text for people,
or one JSON object per line with the keys ``time``, ``level``, ``logger``, ``message`` (and
``exception`` when there is one).
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOG_FORMATS = ("text", "json")
# Every command shows them in lower case and also takes them in upper case (flags.log_level_flag).
LOG_LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _ProjectHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs; a second call replaces it, leaving others be."""


def configure_logging(*, log_format: str, level: str) -> None:
    """Send every logger's records to stderr in ``log_format`` (one of LOG_FORMATS).

    Calling it again replaces the handler it installed before; handlers installed by someone
    else (pytest's log capture, an embedding program) stay.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = _ProjectHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _ProjectHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
