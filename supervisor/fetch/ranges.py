"""A set of byte ranges: which parts of a partial file hold good bytes. Pure data, no I/O."""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator


class RangeSet:
    """Disjoint, sorted, half-open ranges [start, end). Adjacent and overlapping ranges merge on insert."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # Every range that touches [start, end) is absorbed into one.
        i = bisect.bisect_left(self._ends, start)
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    @property
    def total(self) -> int:
        return sum(e - s for s, e in self)

    def prefix(self) -> int:
        """Length of the run of good bytes that starts at offset 0."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def missing(self, size: int) -> list[tuple[int, int]]:
        """The ranges of [0, size) not in the set, in order."""
        gaps: list[tuple[int, int]] = []
        cursor = 0
        for start, end in self:
            if start >= size:
                break
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < size:
            gaps.append((cursor, size))
        return gaps

    def covers(self, size: int) -> bool:
        return not self.missing(size)

    def to_list(self) -> list[list[int]]:
        return [[s, e] for s, e in self]

    def copy(self) -> "RangeSet":
        return RangeSet(self)
