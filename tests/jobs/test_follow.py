"""``Job.follow`` and Ctrl-C, without a cluster: a fake Jobs client whose log stream is busy in
its own code when SIGINT arrives and swallows the interrupt there, as a websocket read may."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace

import pytest

from hmoe.jobs import api
from hmoe.jobs.api import Job

FIRST_CHUNK = "epoch 1\n"
READ_STEP_S = 0.05  # the stream's own (blocking) work per step, where the signal lands
PRESS_AFTER_S = 0.3  # Ctrl-C this long after the first chunk
DETACH_WITHIN_S = 5.0  # a generous bound on a loaded 2-core machine; it takes ~READ_STEP_S
TEST_TIMEOUT_S = 30  # the unfixed follower never returns from a stream that ignores Ctrl-C


async def _ends_on_interrupt() -> AsyncIterator[str]:
    """Swallows the interrupt and ends: the follower sees an ended stream."""
    yield FIRST_CHUNK
    try:
        while True:
            time.sleep(READ_STEP_S)
            await asyncio.sleep(0)
    except (KeyboardInterrupt, asyncio.CancelledError):
        return


async def _ignores_interrupt() -> AsyncIterator[str]:
    """Swallows the interrupt and goes on reading (it ends only when the job does)."""
    yield FIRST_CHUNK
    while True:
        try:
            time.sleep(READ_STEP_S)
            await asyncio.sleep(0)
        except (KeyboardInterrupt, asyncio.CancelledError):
            continue


def _job(stream: Callable[[], AsyncIterator[str]]) -> Job:
    sdk = SimpleNamespace(get_job_info=lambda job_id: None, tail_job_logs=lambda job_id: stream())
    return Job("raysubmit_fake", SimpleNamespace(sdk=sdk, address="http://fake:8265"))


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handling (Ctrl-C raises KeyboardInterrupt), restored after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("stream", [_ends_on_interrupt, _ignores_interrupt])
def test_one_ctrl_c_detaches_wherever_it_lands(
    stream: Callable[[], AsyncIterator[str]], default_sigint: None, monkeypatch
):
    monkeypatch.setattr(api, "DETACH_WAIT_S", READ_STEP_S * 4)
    chunks = _job(stream).follow()
    assert next(chunks) == FIRST_CHUNK
    press = threading.Timer(
        PRESS_AFTER_S, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    start = time.monotonic()
    press.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            next(chunks)
    finally:
        press.join()
    assert time.monotonic() - start < PRESS_AFTER_S + DETACH_WITHIN_S
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(StopIteration):
        next(chunks)  # the generator is closed: detached


def _handler_seen_by(job: Job) -> list[object]:
    seen: list[object] = []

    async def stream() -> AsyncIterator[str]:
        seen.append(signal.getsignal(signal.SIGINT))
        yield FIRST_CHUNK

    sdk = SimpleNamespace(get_job_info=lambda job_id: None, tail_job_logs=lambda job_id: stream())
    job.client = SimpleNamespace(sdk=sdk, address=job.client.address)
    assert list(job.follow()) == [FIRST_CHUNK]
    return seen


def test_follow_takes_sigint_over_only_from_python_default_on_the_main_thread(default_sigint):
    job = _job(_ends_on_interrupt)
    (during,) = _handler_seen_by(job)
    assert during is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def own(signum, frame) -> None:
        pass

    signal.signal(signal.SIGINT, own)
    assert _handler_seen_by(job) == [own]  # a program's own handler is left alone
    assert signal.getsignal(signal.SIGINT) is own

    signal.signal(signal.SIGINT, signal.default_int_handler)
    seen: list[list[object]] = []
    worker = threading.Thread(target=lambda: seen.append(_handler_seen_by(job)))
    worker.start()
    worker.join()
    assert seen == [[signal.default_int_handler]]  # off the main thread: nothing to take over
