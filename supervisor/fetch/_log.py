"""The fetch logger, looked up at each call.

`structlog.get_logger(...).bind()` freezes the configuration of the moment it is called, and `cli` configures logging
twice (before and after reading the settings) and tests reconfigure it: a logger created at import time would keep
writing with a stale configuration.
"""

from __future__ import annotations

from typing import Any

from ..logs import get_logger


class _LazyLogger:
    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, method: str) -> Any:
        return getattr(get_logger(self.name), method)


log = _LazyLogger("fetch")
