"""Knobs of the fetch engine that are not user settings: sizes and waits with sensible defaults (tests shorten
them). Kept apart so that a warm boot imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Tuning:
    """Knobs with sensible defaults; tests shorten the waits."""

    min_part: int = 8 * MiB  # parts shrink to this near the end of a file (see schedule.py)
    max_part: int = 64 * MiB
    single_below: int = 16 * MiB  # smaller files use one connection
    min_steal: int = 4 * MiB
    write_buffer: int = 1 * MiB
    checkpoint_bytes: int = 8 * MiB  # progress record at least this often...
    checkpoint_seconds: float = 0.5  # ...or this often
    flush_seconds: float = 1.0  # fdatasync while downloading (0 = only at the end)
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 600.0
    progress_interval: float = 5.0
    lock_heartbeat: float = 5.0
    lock_stale_after: float = 60.0
    unreachable_after: float = 30.0  # no metadata answer at all for this long: the Hub is unreachable
    max_restarts: int = 2  # whole-file restarts (corrupt bytes, new upstream version, ignored Range)
