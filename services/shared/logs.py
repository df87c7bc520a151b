"""Structured logs: :func:`configure_logging` installs a JSON (or console) formatter
that masks secrets, and a :class:`RepeatedLogFilter` so an outage's repeated client
errors are logged once per interval with a count.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from services.shared.resilience import RepeatGate

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@?#'\"\\]*:)([^\s@/'\"\\]+)(@)")
_KV_PASSWORD = re.compile(
    r"""(?ix)
    ( (?:password|passwd|pwd|secret|api[_-]?key|token)
      [\\"']* \s* [=:] \s* [\\"']* )
    ( [^\s"',;&}\\]+ )
    """
)
_SECRET_KEY = re.compile(r"(?i)password|passwd|secret|token|api[_-]?key|dsn")
MASK: Final = "***"

# Attributes every LogRecord has; anything else came from ``extra=``.
_RECORD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "service", "taskName"}


def mask_secrets(text: str) -> str:
    """Mask URL passwords (``scheme://user:PW@``) and ``password=PW``-like pairs."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    return _KV_PASSWORD.sub(rf"\1{MASK}", text)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if _SECRET_KEY.search(key) and not key.endswith("_kind"):
            masked = mask_secrets(value)
            # A bare secret (no URL/kv shape) under a secret-looking key: hide it all.
            return masked if masked != value or "://" in value else MASK
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return {str(k): _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    return value


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's message and string extras with secrets masked.

    Installed on the handler by :func:`configure_logging`; the formatters mask their
    final output again, so a secret in an exception text is caught too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = mask_secrets(message)
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _RECORD_ATTRS:
                record.__dict__[key] = _mask_value(key, value)
        return True


#: Loggers of the Kafka client libraries and the worker framework: during a broker
#: outage aiokafka alone logs hundreds of connection errors a second per client
THROTTLED_LOGGERS: Final = ("aiokafka", "kafka", "faust", "mode")


class RepeatedLogFilter(logging.Filter):
    """Lets a repeated warning/error through once per ``interval`` seconds, with the
    count of those suppressed in between (``repeated`` field, and in the message).

    A repeat is the same logger, level and message template (``record.msg`` before its
    arguments: "Unable connect to node with id %s: %s" is one message whatever the node
    and error). Applies to records of ``loggers`` (and their children) at WARNING and
    above; installed on the handler by :func:`configure_logging` (a filter on a logger
    would not see its children's records). ``interval=0`` lets everything through.
    """

    def __init__(
        self, interval: float, loggers: Iterable[str] = THROTTLED_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.prefixes = tuple(loggers)
        self._gate = RepeatGate(interval)
        self._clock = clock

    def _throttled(self, record: logging.LogRecord) -> bool:
        if self.interval <= 0 or record.levelno < logging.WARNING:
            return False
        name = record.name
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._throttled(record):
            return True
        key = (record.name, record.levelno, str(record.msg))
        repeated = self._gate.admit(key, self._clock())
        if repeated is None:
            return False
        if repeated:
            record.repeated = repeated
            record.msg = (
                f"{record.msg} (and {repeated} more like this in the last "
                f"{self.interval:g}s)"
            )
        return True


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str | None) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = self.service
        return True


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return mask_secrets(json.dumps(entry, default=str, ensure_ascii=False))


class ConsoleFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.000Z INFO  logger [service] message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = (
            f"{iso_time(record.created)} {record.levelname:<7} {record.name}"
            f" [{getattr(record, 'service', None) or '-'}] {record.getMessage()}"
        )
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_secrets(line)


_HANDLER_MARK: Final = "_ambidex_handler"


def configure_logging(
    format: Literal["json", "console"] = "json",
    level: str | int = "INFO",
    *,
    service: str | None = None,
    stream: TextIO | None = None,
    repeat_interval: float = 10.0,
) -> logging.Handler:
    """Install the Ambidex handler on the root logger (replacing a previous one).

    Returns the handler (tests read what it wrote through ``stream``).
    """
    if format not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else ConsoleFormatter())
    handler.addFilter(RepeatedLogFilter(repeat_interval))
    handler.addFilter(_ServiceFilter(service))
    handler.addFilter(SecretMaskingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
