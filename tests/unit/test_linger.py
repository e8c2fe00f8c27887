"""The event loop lingering after an answer to a client alone (http/linger.py, PredictRoutes).

Whether a halted VM core wakes slowly is the machine's business (README, *Measured here*); these
check what the code promises: it turns the loop until a request starts or the time is up, never
twice at once, not when off, and PredictRoutes starts it only after a request that was alone.
"""

from __future__ import annotations

import asyncio

from test_predict_routes import body, call, scope

from service.server.http.budget import ByteBudget, Reservation
from service.server.http.linger import Linger
from service.server.http.predict import PredictRoutes, Reply
from service.server.http.uploads import Form, Limits


def test_it_turns_the_loop_until_a_request_starts() -> None:
    started = {"busy": False}

    async def main() -> tuple[int, int]:
        linger = Linger(5.0)  # long: only `busy` can end it within the test
        linger.start(lambda: started["busy"])
        for _ in range(20):
            await asyncio.sleep(0)
        during = linger.turns
        started["busy"] = True
        await asyncio.wait_for(linger._task, 1)  # ends within a turn once busy
        return during, linger.turns

    during, after = asyncio.run(main())
    assert during >= 10  # it kept turning while nothing started
    assert after <= during + 1


def test_it_stops_when_its_time_is_up_and_runs_once_at_a_time() -> None:
    now = {"t": 0.0}

    async def main() -> Linger:
        linger = Linger(0.002, clock=lambda: now["t"])
        linger.start(lambda: False)
        first = linger._task
        linger.start(lambda: False)  # already lingering: the same task goes on
        assert linger._task is first
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first.done()
        now["t"] = 0.003  # past the 2 ms
        await asyncio.wait_for(first, 1)
        return linger

    linger = asyncio.run(main())
    assert 3 <= linger.turns <= 7


def test_off_it_starts_nothing() -> None:
    async def main() -> Linger:
        linger = Linger(0)
        linger.start(lambda: False)
        return linger

    linger = asyncio.run(main())
    assert linger._task is None and linger.turns == 0


class Recorder(Linger):
    def __init__(self) -> None:
        super().__init__(1.0)
        self.calls: list[bool] = []

    def start(self, busy) -> None:
        self.calls.append(busy())  # whether a request held a reservation when lingering began


def _post(app: PredictRoutes, client: tuple[str, int]) -> int:
    sent = call(app, {**scope(), "client": client}, [body(("images", "a.jpg", b"\xff"))])
    return sent[0]["status"]


def test_predict_routes_linger_only_after_a_request_that_was_alone() -> None:
    budget = ByteBudget(1 << 20)
    recorder = Recorder()
    other: list[Reservation] = []

    async def handler(form: Form, route: str, reservation: Reservation) -> Reply:
        return Reply.json(200, {"ok": True})

    async def inner(scope, receive, send) -> None:
        raise AssertionError("not reached")

    app = PredictRoutes(
        inner,
        paths={"/predict"},
        limits=lambda: Limits(inflight=budget),
        handler=handler,
        linger=lambda: recorder,
    )
    assert _post(app, ("127.0.0.1", 1)) == 200
    assert recorder.calls == [False]  # alone: lingers, and no request holds a reservation after it
    other.append(Reservation(budget, sole_client=True))  # another request in progress
    assert _post(app, ("127.0.0.1", 1)) == 200
    assert recorder.calls == [False]  # not alone: no lingering
    other.pop().close()
    assert _post(app, ("127.0.0.1", 2)) == 200  # a second client within the window
    assert recorder.calls == [False]
