"""Which bytes each connection fetches next.

The missing ranges are handed out in file order, so the hashed prefix grows steadily. A part is at most `max_part`
and at most 1/(2 x connections) of what is not handed out yet: parts shrink as the end nears, so the connections
finish close together and little is left to hash after the last byte. When nothing is left to hand out, an idle
connection takes the upper half of the busiest part still running (work stealing), so the last seconds of a file
still use every connection. Written bytes are recorded here, in one RangeSet.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from .ranges import RangeSet

ALIGN = 64 * 1024


@dataclass(eq=False)
class Part:
    start: int
    pos: int  # next byte to write
    end: int  # exclusive; may shrink when another connection steals the tail
    reserved: int = 0  # pos + bytes being written right now (a thief must not take them)

    @property
    def remaining(self) -> int:
        return max(self.end - max(self.pos, self.reserved), 0)


class Schedule:
    def __init__(self, done: RangeSet, size: int, part_size: int, min_steal: int, align: int = ALIGN,
                 connections: int = 1, min_part: int = 0):
        self.size = size
        self.align = align
        self.done = done
        self.min_steal = min_steal
        self.max_part = part_size
        self.min_part = min(min_part or part_size, part_size)
        self.connections = max(connections, 1)
        self._lock = threading.Lock()
        self._pending: deque[tuple[int, int]] = deque(done.missing(size))
        self._unassigned = sum(end - start for start, end in self._pending)
        self._active: set[Part] = set()

    @property
    def missing_bytes(self) -> int:
        return self.size - self.done.total

    def next(self) -> Part | None:
        with self._lock:
            if self._pending:
                start, end = self._pending.popleft()
                want = max(min(self.max_part, self._unassigned // (2 * self.connections)), self.min_part)
                if end - start > want:
                    cut = start + want
                    cut = max(cut - cut % self.align, start + 1) if want >= self.align else cut
                    self._pending.appendleft((cut, end))
                    end = cut
                self._unassigned -= end - start
                part = Part(start, start, end)
                self._active.add(part)
                return part
            victim = max(self._active, key=lambda p: p.remaining, default=None)
            if victim is None or victim.remaining < 2 * self.min_steal:
                return None
            base = max(victim.pos, victim.reserved)
            mid = base + victim.remaining // 2
            mid -= mid % self.align
            if mid <= base:
                return None
            part = Part(mid, mid, victim.end)
            victim.end = mid
            self._active.add(part)
            return part

    def reserve(self, part: Part, n: int) -> int:
        """How many of `n` bytes at part.pos this connection may still write (the tail may have been stolen)."""
        with self._lock:
            n = max(min(n, part.end - part.pos), 0)
            part.reserved = part.pos + n
            return n

    def advance(self, part: Part, n: int) -> int:
        """Record n bytes written at part.pos; returns the length of the complete prefix of the file."""
        with self._lock:
            self.done.add(part.pos, part.pos + n)
            part.pos += n
            part.reserved = part.pos
            return self.done.prefix()

    def release(self, part: Part) -> None:
        """The connection gives the part up (finished, failed for good, or stopping)."""
        with self._lock:
            self._active.discard(part)
            if part.pos < part.end:
                self._pending.appendleft((part.pos, part.end))
                self._unassigned += part.end - part.pos

    def snapshot(self) -> RangeSet:
        with self._lock:
            return self.done.copy()

    def complete(self) -> bool:
        with self._lock:
            return self.done.covers(self.size)
