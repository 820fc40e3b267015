"""RangeSet and Schedule: the bookkeeping that decides which bytes are fetched (again)."""

from hypothesis import given, strategies as st

from supervisor.fetch.ranges import RangeSet
from supervisor.fetch.schedule import Schedule

spans = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)).map(lambda t: (t[0], t[0] + t[1])), max_size=30)


@given(spans)
def test_rangeset_holds_exactly_the_bytes_added(ranges):
    rs = RangeSet(ranges)
    expected = set()
    for a, b in ranges:
        expected.update(range(a, b))
    got = set()
    for a, b in rs:
        got.update(range(a, b))
    assert got == expected
    pairs = list(rs)
    assert all(a < b for a, b in pairs)
    assert all(pairs[i][1] < pairs[i + 1][0] for i in range(len(pairs) - 1)), "sorted, merged, not adjacent"
    assert rs.total == len(expected)


@given(spans, st.integers(0, 600))
def test_missing_is_the_complement(ranges, size):
    rs = RangeSet(ranges)
    have = {i for a, b in rs for i in range(a, b)}
    missing = {i for a, b in rs.missing(size) for i in range(a, b)}
    assert missing == set(range(size)) - have
    assert rs.covers(size) == (not missing)
    prefix = rs.prefix()
    assert set(range(prefix)) <= have and (prefix not in have)


def test_schedule_hands_out_missing_parts_in_order_then_steals_the_busiest_tail():
    done = RangeSet([(0, 100)])
    schedule = Schedule(done, 1000, part_size=300, min_steal=50, align=1)
    parts = [schedule.next() for _ in range(3)]
    assert [(p.start, p.end) for p in parts] == [(100, 400), (400, 700), (700, 1000)]
    # The first part is nearly done, the second half done, the last untouched: an idle connection takes the upper half of the last.
    schedule.advance(parts[0], schedule.reserve(parts[0], 250))
    schedule.advance(parts[1], schedule.reserve(parts[1], 100))
    thief = schedule.next()
    assert thief is not None and thief.end == 1000 and parts[2].end == thief.start and 700 < thief.start < 1000
    # Bytes written by the victim never exceed its new end.
    assert schedule.reserve(parts[2], 10_000) == parts[2].end - parts[2].pos


def test_schedule_requeues_an_abandoned_part_from_where_it_stopped():
    schedule = Schedule(RangeSet(), 100, part_size=100, min_steal=1000)
    part = schedule.next()
    schedule.advance(part, schedule.reserve(part, 30))
    schedule.release(part)
    again = schedule.next()
    assert (again.start, again.end) == (30, 100)
    assert schedule.snapshot() == RangeSet([(0, 30)])
