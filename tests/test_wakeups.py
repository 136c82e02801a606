"""The master's wake-up history (supervisor/wakeups.py): topped up before each fork after the first
start, never before the first workers, and leaving nothing behind.

What the top-up is for, CPUs left idle by freshly forked workers, is a speed and is measured by
the benchmark harness (README, Benchmarks), not asserted here.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from supervisor import wakeups
from supervisor.pool import Pool
from supervisor.wakeups import TARGET, WakeHistory, alternate
from tests.conftest import Launcher, render_config, service

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the count exists on Linux only")


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def _nothing_left() -> Iterator[None]:
    """The block ends with the threads and descriptors it began with (whatever it raised)."""
    threads, fds = threading.active_count(), _open_fds()
    try:
        yield
    finally:
        assert threading.active_count() == threads
        assert _open_fds() == fds


class TestAlternate:
    """Waking two helper threads in turn leaves the caller as it found it."""

    def test_no_thread_or_descriptor_is_left(self) -> None:
        """Both helpers are joined and every pipe closed before it returns (the master forks next)."""
        with _nothing_left():
            alternate(200)

    def test_the_two_helpers_take_turns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every wake-up goes to the other helper than the last: only a change of wakee counts."""
        woken: list[int] = []

        wake = wakeups._Helper.wake

        def recording_wake(helper: wakeups._Helper) -> bool:
            woken.append(helper.thread.native_id or 0)
            return wake(helper)

        monkeypatch.setattr(wakeups._Helper, "wake", recording_wake)
        alternate(9)
        assert len(woken) == 9
        assert len(set(woken)) == 2
        assert all(a != b for a, b in itertools.pairwise(woken))

    def test_a_helper_that_ends_does_not_hang_the_caller(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A helper gone early (it failed) closes its reply pipe: the caller stops waking, not waits."""
        echo = wakeups._Helper._echo
        answered = 0

        def failing_echo(helper: wakeups._Helper) -> None:
            nonlocal answered
            if answered:
                os.close(helper.replies_w)
                return
            answered += 1
            echo(helper)

        monkeypatch.setattr(wakeups._Helper, "_echo", failing_echo)
        with _nothing_left():
            alternate(50)  # returns: the second helper ended at once

    def test_a_helper_that_cannot_start_leaves_nothing_behind(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No thread to be had for the second helper: the error reaches the caller (the pool logs
        `wakeups_failed` and forks anyway), and the first helper and every pipe are gone."""
        start = threading.Thread.start
        started = 0

        def second_fails(thread: threading.Thread) -> None:
            nonlocal started
            started += 1
            if started == 2:
                raise RuntimeError("can't start new thread")
            start(thread)

        monkeypatch.setattr(threading.Thread, "start", second_fails)
        with _nothing_left(), pytest.raises(RuntimeError):
            alternate(10)


def _turned_on(target: int) -> WakeHistory:
    history = WakeHistory(target)
    history.enabled = True
    return history


class TestWakeHistory:
    """The estimate halves for every whole second; a top-up brings it back to the target."""

    def test_off_until_turned_on(self) -> None:
        """A new history tops up nothing: the master turns it on once its first workers are ready."""
        assert WakeHistory().top_up((), now=100.0) == 0

    @linux_only
    def test_first_top_up_is_the_whole_target(self) -> None:
        """Nothing is known of the master's count before: it is taken as zero."""
        history = _turned_on(target=50)
        assert history.top_up((), now=100.0) == 50
        assert history.estimate(100.5) == 50

    @linux_only
    def test_within_the_second_nothing_more(self) -> None:
        """Workers forked together (a reload's generation) share one top-up."""
        history = _turned_on(target=50)
        history.top_up((), now=100.0)
        assert history.top_up((), now=100.9) == 0

    @linux_only
    def test_each_whole_second_halves_the_estimate(self) -> None:
        """Reloads a second apart top up half the target; after three seconds, seven eighths."""
        history = _turned_on(target=64)
        history.top_up((), now=100.0)
        assert history.top_up((), now=101.2) == 32
        assert history.top_up((), now=104.5) == 56

    @linux_only
    def test_an_hour_later_the_whole_target(self) -> None:
        """However long since the last top-up (reloads an hour apart), the estimate is simply zero."""
        history = _turned_on(target=50)
        history.top_up((), now=100.0)
        assert history.top_up((), now=3700.0) == 50

    @linux_only
    def test_signal_mask_is_restored(self) -> None:
        """The master's signals are blocked only while the helpers live."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        history = _turned_on(target=20)
        history.top_up((signal.SIGHUP, signal.SIGTERM), now=100.0)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == mask


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


class TestPool:
    """A top-up that fails, however it fails, is logged and never keeps the pool from forking."""

    @pytest.mark.parametrize("error", [OSError(24, "Too many open files"), OverflowError("a bug")])
    def test_failure_is_a_warning(self, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
        def failing(*args: Any) -> int:
            raise error

        log = _Log()
        pool = Pool(None, -1, -1, (), None, log)  # type: ignore[arg-type]
        monkeypatch.setattr(pool.wakes, "top_up", failing)
        pool._top_up_wakes()
        assert log.events == [("wakeups_failed", {"error": repr(error)})]


@linux_only
class TestMaster:
    """The real daemon tops up before a reload's forks, not before its first workers."""

    def test_reload_tops_up_before_forking(self, sockherd: Launcher) -> None:
        """Once per generation, between reload_started and its first fork; no helper thread left."""
        daemon = sockherd.start({"svc": service(workers=2)})
        assert not daemon.events("wakeups_topped_up")  # the first start goes without
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done")
        events = [e["event"] for e in daemon.events()]
        topped = events.index("wakeups_topped_up")
        assert events.index("reload_started") < topped < events.index("worker_spawned", topped)
        assert daemon.events("wakeups_topped_up")[0]["wakeups"] == TARGET
        assert len(daemon.events("wakeups_topped_up")) == 1  # one for the generation's two forks
        assert psutil.Process(daemon.pid).num_threads() == 1  # the helpers are gone

    def test_respawn_after_a_crash_tops_up(self, sockherd: Launcher) -> None:
        """Any fork after the first start: a worker replaced after SIGKILL too."""
        daemon = sockherd.start({"svc": service(workers=1)})
        os.kill(daemon.workers("svc")[0], signal.SIGKILL)
        daemon.wait_for("worker_ready", count=2)
        assert daemon.events("wakeups_topped_up")

    def test_pinned_workers_go_without(self, sockherd: Launcher) -> None:
        """cpu_affinity = "auto": the kernel places no thread of such a worker by the counts, so a
        reload of a pinned service tops nothing up; an unpinned one beside it still does."""
        daemon = sockherd.start({"pinned": service(workers=2, cpu_affinity="auto")})
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done")
        assert not daemon.events("wakeups_topped_up")
        rewrite_services = {"pinned": service(workers=2, cpu_affinity="auto"), "free": service(workers=1)}
        daemon.config_path.write_text(render_config(rewrite_services, sockherd.supervisor_defaults()))
        daemon.send(signal.SIGHUP)
        daemon.wait_for("reload_done", count=2)
        assert len(daemon.events("wakeups_topped_up")) == 1  # before the one unpinned fork
