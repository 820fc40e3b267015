"""The parsers of environment values: each takes the raw text and returns a value, or raises ValueError saying what
was expected (settings.py declares which variable uses which). Pure functions, no environment access."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
from pathlib import Path
from typing import Callable

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class Secret(str):
    """A string whose repr never shows its value, so a printed Settings cannot leak it."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"


# ---------------------------------------------------------------------------------------------------------------
# Parsers: each takes the raw text and returns a value or raises ValueError saying what was expected.


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {'/'.join(TRUE_WORDS + FALSE_WORDS)} (any case)")


def _int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number{_range_text(low, high)}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"expected a whole number{_range_text(low, high)}")
        return value

    return parse


def _float(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number{_range_text(low, high)}") from None
        if not math.isfinite(value):  # nan compares false with everything; inf overflows byte counts
            raise ValueError(f"expected a finite number{_range_text(low, high)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"expected a number{_range_text(low, high)}")
        return value

    return parse


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return f" of at most {high}" if high is not None else ""


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return word

    return parse


def _text(text: str) -> str:
    return text.strip()


def _secret(text: str) -> Secret:
    return Secret(text.strip())


def _path(text: str) -> Path:
    text = text.strip()
    if not text:
        raise ValueError("expected a path, got an empty value")
    return Path(text).expanduser()


def _optional_path(text: str) -> Path | None:
    return _path(text) if text.strip() else None


def _args(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split into arguments ({exc}); check the quotes") from None


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def _listen(text: str) -> str:
    """ComfyUI's --listen: an IP address or host name, or a comma list of them (`0.0.0.0,::`)."""
    text = text.strip()
    for part in text.split(","):
        try:
            ipaddress.ip_address(part.strip().strip("[]"))
        except ValueError:
            if not _HOSTNAME.fullmatch(part.strip()):
                raise ValueError("expected an IP address or host name (or a comma list of them), e.g. 0.0.0.0, "
                                 "127.0.0.1 or 0.0.0.0,::") from None
    return text


def _workflow_file(text: str) -> Path | None:
    path = _optional_path(text)
    if path is not None and not path.is_file():
        raise ValueError(f"{path} is not a file" + ("" if path.exists() else " (it does not exist)") +
                         "; the path is read inside the container")
    return path


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, for example 127.0.0.1:8189")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    return host.strip("[]"), number


def _optional_address(text: str) -> tuple[str, int] | None:
    return _address(text) if text.strip() else None


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return text


def _ports(text: str) -> tuple[int, ...]:
    ports = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 65535:
            raise ValueError(f"{part!r} is not a port: expected a comma list of ports from 1 to 65535")
        if int(part) in ports:
            raise ValueError(f"port {part} is listed twice: each ComfyUI needs its own")
        ports.append(int(part))
    return tuple(ports)


def _paths(text: str) -> tuple[Path, ...]:
    parts = [p.strip() for p in text.replace(",", os.pathsep).split(os.pathsep)]
    return tuple(Path(p).expanduser() for p in parts if p)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_edit(a: str, b: str) -> bool:
    """True when `a` becomes `b` by one insertion, deletion, substitution or swap of neighbours."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long_[k]), len(short))
    return short[i:] == long_[i + 1:]
