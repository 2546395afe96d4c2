"""The receiver's shared body-deadline timer: a read past its deadline becomes TimeoutError,
and a cancel that is not the timer's stays a cancel."""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest.deadlines import BodyDeadlines


async def _with_timer(seconds: float, reading: asyncio.Future[str] | None = None) -> str:
    deadlines = BodyDeadlines(seconds, precision=0.01)
    deadlines.start()
    try:
        never = asyncio.get_running_loop().create_future()
        return await deadlines.within(reading if reading is not None else never)
    finally:
        await deadlines.stop()


def test_a_read_that_finishes_in_time_returns_its_value() -> None:
    async def run() -> str:
        done = asyncio.get_running_loop().create_future()
        done.set_result("body")
        return await _with_timer(5, done)

    assert asyncio.run(run()) == "body"


def test_a_read_past_its_deadline_is_a_timeout_and_the_task_is_not_left_cancelled() -> None:
    async def run() -> bool:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await _with_timer(0.05)
        assert time.monotonic() - started >= 0.05
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # would raise CancelledError if a cancel were still pending
        return task.cancelling() == 0

    assert asyncio.run(run())


def test_a_cancel_from_elsewhere_stays_a_cancel() -> None:
    async def run() -> None:
        reader = asyncio.ensure_future(_with_timer(30))
        await asyncio.sleep(0)  # the reader starts and waits on its body
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader

    asyncio.run(run())


def test_without_a_running_timer_there_is_no_deadline() -> None:
    async def run() -> str:
        done = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(done.set_result, "late body")
        return await BodyDeadlines(0).within(done)

    assert asyncio.run(run()) == "late body"
