"""Shutting a service down stops its background jobs, even one that loses a cancellation.

A polling loop whose cancellation is swallowed once (as a library's own
timeout can do when it expires as the cancellation arrives) went on polling,
and the process never finished shutting down; ``stop_tasks`` cancels again
until every job has ended.
"""

from __future__ import annotations

import asyncio

from runtime.service import RECANCEL_SECONDS, stop_tasks


def test_a_job_that_swallows_its_first_cancellation_still_stops() -> None:
    polls: list[int] = []

    async def stubborn_loop() -> None:
        swallowed = False
        while True:
            try:
                polls.append(1)
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True  # lost, as a library's misfiring timeout would lose it

    async def plain_loop() -> None:
        await asyncio.Event().wait()  # until cancelled

    async def failing_job() -> None:
        raise RuntimeError("already failed")

    async def scenario() -> float:
        tasks = [asyncio.create_task(job()) for job in (stubborn_loop, plain_loop, failing_job)]
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.wait_for(stop_tasks(tasks), timeout=5)
        assert all(task.done() for task in tasks)
        assert tasks[0].cancelled()
        assert tasks[1].cancelled()
        assert isinstance(tasks[2].exception(), RuntimeError)
        return loop.time() - began

    took = asyncio.run(scenario())
    assert took < RECANCEL_SECONDS * 3
    assert len(polls) > 1  # it really did go on polling after the first cancellation
