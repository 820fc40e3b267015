"""Structured logging, configured once: JSON lines for machines, a readable console for people.

Every event passes through `redact`, which removes the value of every registered secret (HF_TOKEN, API keys,
passwords) and anything shaped like a Hugging Face token or a bearer header, wherever it appears in the event.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

import structlog

REDACTED = "***"
# Secrets shorter than this are not searched for: replacing every "abc" in the logs would hide more than it protects.
MIN_SECRET_LENGTH = 4
_TOKEN_SHAPES = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b|(?i:(?<=bearer )[A-Za-z0-9._~+/=-]{8,})")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_json_lines = True  # what the last configure() chose


def register_secret(value: str | None) -> None:
    """Make `value` disappear from every later log event."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """Return `text` without any registered secret or token-shaped string."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPES.sub(REDACTED, text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub_value(v) for v in value)
    if isinstance(value, BaseException):
        return scrub(f"{type(value).__name__}: {value}")
    return value


def redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: remove secrets from every value of the event."""
    return {key: _scrub_value(value) for key, value in event_dict.items()}


# The last warnings and errors, already redacted, for the status page ("recent warnings") and its metrics.
RECENT_KEEP = 50
RECENT_TEXT = 400  # characters of an event's fields kept: enough to read, small enough for a page
_RECENT_LEVELS = {"warning": "warning", "error": "error", "critical": "error", "exception": "error"}
_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_KEEP)
_counts: dict[str, int] = {"warning": 0, "error": 0}
_recent_lock = threading.Lock()


def remember(_logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor (after `redact`): keep a short copy of each warning or error in a bounded ring."""
    level = _RECENT_LEVELS.get(str(event_dict.get("level") or method).lower())
    if level is not None:
        fields = {k: v for k, v in event_dict.items() if k not in ("event", "level", "timestamp", "exc_info")}
        text = json.dumps(fields, default=str, ensure_ascii=False)
        entry = {"at": time.time(), "level": level, "event": str(event_dict.get("event", "")),
                 "fields": text if len(text) <= RECENT_TEXT else text[:RECENT_TEXT - 1] + "\u2026"}
        with _recent_lock:
            _recent.append(entry)
            _counts[level] += 1
    return event_dict


def recent_events() -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(the last RECENT_KEEP warnings and errors, oldest first; how many of each level since start)."""
    with _recent_lock:
        return [dict(e) for e in _recent], dict(_counts)


class _StdlibBridge(logging.Handler):
    """Routes warnings of libraries that use `logging` (huggingface_hub, httpx) through structlog and redaction."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not kill the daemon
            message = str(record.msg)
        log = structlog.get_logger("lib").bind(source=record.name)
        try:
            getattr(log, record.levelname.lower(), log.warning)(message)
        except (OSError, ValueError):  # the stream is gone (closed stderr): a library's log must not raise
            pass


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process. `fmt` is auto, json or console."""
    global _json_lines
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not _isatty(stream))
    _json_lines = use_json
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=_isatty(stream), pad_event=30)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        remember,
    ]
    if use_json:
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdlibBridge)] + [_StdlibBridge()]
    root.setLevel(logging.WARNING)


def human_output() -> bool:
    """May a command print plain text for people beside its log events? Not with JSON lines: there every line a
    process prints is one JSON object, so `docker logs ... | jq` never breaks."""
    return not _json_lines


def get_logger(name: str = "supervisor", **bind: Any) -> Any:
    """A lazy logger: it reads the configuration at each call, so one made at import time follows `configure`."""
    return structlog.get_logger(name, **bind)


def _level_number(level: str) -> int:
    return getattr(logging, level.upper(), logging.INFO)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
