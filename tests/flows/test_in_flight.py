"""The delivery path's workers: several people at once, each person's records in order."""

from __future__ import annotations

import threading
import time

import pytest

from connectors.transport import FatalError, RetriableError
from flows.common import Pace
from flows.delivery import per_person


def person(row) -> str:
    return row[0]


def record_id(row) -> str:
    return f"{row[0]}-{row[1]}"


def test_each_persons_records_go_in_order_on_one_worker_and_several_people_at_once():
    rows = [(p, i) for i in range(3) for p in "abcd"]  # the stream interleaves the people
    # Every person's first record waits until all four are on the wire: the test passes only
    # if four workers deliver at once (else the barrier breaks after its timeout).
    together = threading.Barrier(4, timeout=10)
    seen: list[tuple[str, int]] = []
    workers: dict[str, set[str]] = {}

    def deliver(row) -> None:
        if row[1] == 0:
            together.wait()
        seen.append(row)
        workers.setdefault(row[0], set()).add(threading.current_thread().name)

    assert per_person(rows, deliver, person, record_id, workers=4, least=4) == {}
    for p in "abcd":
        assert [row for row in seen if row[0] == p] == [(p, 0), (p, 1), (p, 2)]
        assert len(workers[p]) == 1
    assert len(set().union(*workers.values())) == 4


def test_a_records_failure_is_its_own_and_the_persons_next_record_still_goes():
    rows = [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    refused = FatalError("timify", "appointments.create", 400)
    lost = RetriableError("timify", "customers.create", 503)

    def deliver(row) -> None:
        if row == ("b", 0):
            raise lost
        if row == ("a", 1):
            raise refused

    failures = per_person(rows, deliver, person, record_id, workers=4, least=4)
    assert failures == {"b-0": lost, "a-1": refused}
    assert list(failures) == ["b-0", "a-1"]  # in the stream's order, whoever finished first


@pytest.mark.parametrize("workers", [1, 4])
def test_an_auth_failure_stops_every_worker_and_is_raised(workers):
    rows = [(p, i) for i in range(5) for p in "abcd"]
    sent: list = []

    def deliver(row) -> None:
        if row == ("a", 1):
            raise FatalError("timify", "customers.create", 401)
        sent.append(row)

    with pytest.raises(FatalError) as raised:
        per_person(rows, deliver, person, record_id, workers=workers, least=workers)
    assert raised.value.status == 401
    assert ("a", 2) not in sent and len(sent) < len(rows) - 1


def test_the_pace_opens_up_for_slow_answers_and_stays_at_its_least_for_fast_ones():
    fast, slow = Pace(least=1, most=8), Pace(least=2, most=8)
    for _ in range(30):
        fast.observe(0.004)  # calls answered at once
        slow.observe(0.105)  # at 100 ms an answer
    assert fast.limit == 1 and slow.limit == 8
    for _ in range(30):
        slow.observe(0.004)
    assert slow.limit == 2  # and closes again when the answers speed up
    for seconds in (0.004, 0.6, 0.004, 0.004, 0.7):
        fast.observe(seconds)  # a retry's wait now and then is no reason to open up
    assert fast.limit == 1


def test_the_pace_judges_a_unit_by_the_time_per_call_it_sent(monkeypatch):
    """Four quick calls in 48 ms (a student-ID order) keep one worker; judged per unit they
    would have opened four. One call in the same 48 ms opens the pool."""
    from connectors import transport
    from flows import common

    ticks = iter(x * 0.048 for x in range(100))
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))

    def units(pace: Pace, calls: int) -> int:
        for _ in range(5):
            with pace.slot():
                transport._THREAD.calls = transport.calls_on_this_thread() + calls
        return pace.limit

    assert units(Pace(least=1, most=8), calls=4) == 1
    assert units(Pace(least=1, most=8), calls=1) == 4


def test_a_pace_gives_its_places_first_come_first_served():
    # A pool's worker that finishes a unit asks for a place again at once, for the next
    # unit: it must queue behind the units already waiting, or the caller, who takes the
    # answers in order, waits for a unit passed over again and again.
    pace = Pace(least=1, most=1)
    order: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def first_then_again() -> None:
        with pace.slot():
            order.append("a")
            inside.set()
            leave.wait(timeout=30)
        with pace.slot():  # straight back, as a worker does
            order.append("a again")

    def unit(name: str) -> None:
        with pace.slot():
            order.append(name)

    threads = [threading.Thread(target=first_then_again)]
    threads[0].start()
    assert inside.wait(timeout=30)
    for name in ("b", "c"):
        threads.append(threading.Thread(target=unit, args=(name,)))
        threads[-1].start()
        for _ in range(100_000):  # until it waits in line (no clock involved)
            if len(pace._line) == len(threads) - 1:
                break
            time.sleep(0)
    assert len(pace._line) == 2
    leave.set()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["a", "b", "c", "a again"]
