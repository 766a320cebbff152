"""A lab's tests side by side: each group of tests runs in a forked pytest process of its own, a shard.

The tests of one lab mostly wait on Celery (countdowns, backoff, visibility timeouts, time limits) and barely
use the CPU, so a grade that runs them side by side costs about its longest scenario instead of the sum.

A shard is a fork of the pytest process taken after collection, so it pays no interpreter start and no
collection; the broker is opened once, by the parent, and every lab's import probe runs once, in the parent,
while the shards set up. At most ``$CELERYLAB_SHARDS`` (3) run at once, and each takes the longest group of
tests left whenever it is free (by tests/labs/durations.json, measured on the solutions; a test not in it by
a tenth of its deadline), so the longest scenarios start first and the short ones fill in around them.

A shard keeps its lab session (namespace, event recorder, workers, HTTP stub, database) from one group to
the next only while the groups leave it clean: every task seen has ended, nothing waits on the broker, no
worker holds a task, no beat or proxy is left (``LabSession.leftovers``, asked by the plugin after each
group's last test). Otherwise the group's fixtures are torn down there and the next group starts on a fresh
session, so what one test leaves behind (a backlog of tasks, a busy worker) never reaches another, whichever
ran first; a serial grade decides the same way. A shard runs its tests with pytest's own protocol (fixtures,
pytest-timeout's backstop, the grade report's hooks) and sends every report to the parent, which replays
them in collection order: the progress line, ``-v``, the score table and the JSON report read as in a serial
run.

Markers (a lab author writes a test as usual, plus at most one of these):

- ``@pytest.mark.together("name")``: tests that judge one shared scenario (a module fixture that runs it)
  go to the same shard, so the scenario runs once. Without it, a module fixture is made afresh in every shard
  that uses one, which is correct but costs its setup again.
- ``@pytest.mark.exclusive``: the test disturbs what every shard shares: it restarts the embedded broker. It
  runs after every shard has ended, in the main process, with nothing beside it. On a broker the kit may not
  restart, its faults reach only its own proxied workers, so there it runs side by side like any other.

``--serial`` (or ``$CELERYLAB_SERIAL=1``) runs the tests one after the other in one process, as plain pytest.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from celerylab.engine import forkserver, framing, processes

SERIAL_ENV = "CELERYLAB_SERIAL"
MAX_SHARDS = int(os.environ.get("CELERYLAB_SHARDS", "3"))  # side by side at most: measured best on 2 cores


@dataclass
class Shard:
    """A group of tests (indices into the session's items) and, once forked, its process."""

    items: list[int]
    pid: int = 0
    fd: int = -1  # the parent reads the shard's reports here
    down: int = -1  # and sends it what it learnt after the fork (the import probes) here
    buffer: bytearray = field(default_factory=bytearray)
    done: set[int] = field(default_factory=set)
    exit_code: int | None = None


def wanted(
    config: pytest.Config, items: Sequence[pytest.Item], is_graded: Callable[[pytest.Item], bool]
) -> bool:
    """Shard when every test is an autograder test and nothing asks for one process (``--serial``, a
    debugger, ``-x``, collect-only)."""
    option = config.option
    return (
        hasattr(os, "fork")
        and len(items) > 1
        and all(is_graded(item) for item in items)
        and not config.getoption("--serial")
        and os.environ.get(SERIAL_ENV, "") in ("", "0")
        and not option.collectonly
        and not getattr(option, "usepdb", False)
        and not getattr(option, "maxfail", 0)
    )


def exclusive(item: pytest.Item) -> bool:
    return item.get_closest_marker("exclusive") is not None


def plan(items: Sequence[pytest.Item], weight: Callable[[pytest.Item], float]) -> list[list[int]]:
    """Groups of item indices, in the order shards should take them: heaviest first (by ``weight``, a
    test's expected seconds), so the longest scenarios start at once and the short ones fill in around them.
    A group is one module's tests that share a ``together`` name, or a single test."""
    groups: dict[tuple[str, str], list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(_group_key(item, index), []).append(index)
    return sorted(groups.values(), key=lambda g: (-sum(weight(items[i]) for i in g), g[0]))


def group_ends(items: Sequence[pytest.Item]) -> set[str]:
    """The node ids of the tests that end their group (its last in collection order): where a grade may
    ask whether the session is still clean enough for the next group."""
    last: dict[tuple[str, str], str] = {}
    for index, item in enumerate(items):
        last[_group_key(item, index)] = item.nodeid
    return set(last.values())


def _group_key(item: pytest.Item, index: int) -> tuple[str, str]:
    mark = item.get_closest_marker("together")
    return (str(item.fspath), mark.args[0] if mark else f"#{index}")


class SessionOnly:
    """Stands for "the next test is in another module" in ``SetupState.teardown_exact``: every fixture but
    the session-scoped ones is torn down (the broker stays open)."""

    def __init__(self, session: pytest.Session) -> None:
        self.session = session

    def listchain(self) -> list[pytest.Session]:
        return [self.session]


class Runner:
    """The parent: forks the shards, collects their reports, replays them in order, runs exclusive tests."""

    def __init__(
        self,
        session: pytest.Session,
        groups: list[list[int]],
        parent_runs: set[int],
        on_fork: Callable[[int], None],
        result_of: Callable[[pytest.Config, str], dict | None],
        take_result: Callable[[pytest.Item, dict | None, str], None],
        after_fork: Callable[[], Any] = lambda: None,
        phases_of: Callable[[pytest.Config], Any] = lambda _config: None,
        take_phases: Callable[[Any], None] = lambda _phases: None,
        limit: int = MAX_SHARDS,
        servers: Sequence[forkserver.ForkServer] = (),
    ) -> None:
        self.session, self.config = session, session.config
        self.items: list[pytest.Item] = list(session.items)
        self.queue = list(groups)  # groups not yet handed to a shard, in the order they should start
        self.shards = [Shard(items=self.queue.pop(0)) for _ in range(min(limit, len(groups)))]
        self.parent_runs = parent_runs  # exclusive tests: run here, once every shard has ended
        self.on_fork, self.result_of, self.take_result = on_fork, result_of, take_result
        self.after_fork = after_fork  # run by the parent while the shards set up; its result goes to each
        # A shard's last word, once its last fixtures are gone (the time its sessions took to close)
        self.phases_of, self.take_phases = phases_of, take_phases
        self.servers = list(servers)  # a zygote's sockets, one per shard (by number), launched beforehand
        self._down = -1  # in a shard: where the parent's frames arrive (the payload, then its next groups)
        self._frames: dict[str, list[Any]] = {}
        self._frames_lock = threading.Lock()
        self._received_lock = threading.Lock()  # every session's probe thread asks; one frame comes
        self._received: Any = None
        self._has_received = False
        self.finished: dict[int, list[tuple]] = {}  # item index -> its messages, until replayed
        self.replayed = 0  # every item before this index has been shown

    # -- the parent -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            for shard in self.shards:
                self._fork(shard)
            self._payload = self.after_fork()
            for shard in self.shards:
                self._tell(shard, ("payload", self._payload))
            self._collect()
        except KeyboardInterrupt:
            self._stop_shards()
            raise
        self._replay()
        if self.parent_runs:
            self._received, self._has_received = self._payload, True  # what received() gives a test here
            self.on_fork(len(self.shards))  # the main process is the last shard (its own log folder)
            serve_workers_from_here()
        for index in sorted(self.parent_runs):
            self._replay(until=index)
            later = [i for i in sorted(self.parent_runs) if i > index]
            nextitem = self.items[later[0]] if later else None
            self.config.hook.pytest_runtest_protocol(item=self.items[index], nextitem=nextitem)
            self.replayed = index + 1
            self._replay()

    def received(self) -> Any:
        """In a shard: what the parent's ``after_fork`` returned (waits for it the first time)."""
        with self._received_lock:
            if not self._has_received:
                self._received, self._has_received = self._frame("payload"), True
        return self._received

    def next_group(self) -> list[int]:
        """In a shard: ask the parent for more tests to run; ``[]`` when none are left."""
        self._shard_channel.send(("next", -1))
        return self._frame("group")

    def _frame(self, kind: str) -> Any:
        """In a shard: the next frame of ``kind`` from the parent, keeping the others for their reader (the
        probe's thread waits for the payload while the main thread asks for groups)."""
        with self._frames_lock:
            while not self._frames.get(kind):
                size = framing.HEADER.unpack(_read_exactly(self._down, framing.HEADER.size))[0]
                got, value = pickle.loads(_read_exactly(self._down, size))
                self._frames.setdefault(got, []).append(value)
            return self._frames[kind].pop(0)

    def _tell(self, shard: Shard, frame: tuple) -> None:
        data = pickle.dumps(frame)
        with contextlib.suppress(OSError):  # a shard that already ended reads nothing
            _write_all(shard.down, framing.frame(data))

    def _fork(self, shard: Shard) -> None:
        read, write = os.pipe()
        down_read, down_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the shard: never returns
            os.close(read)
            os.close(down_write)
            self._down = down_read
            _Shard(self, shard, write).main()
        os.close(write)
        os.close(down_read)
        shard.pid, shard.fd, shard.down = pid, read, down_write
        number = self.shards.index(shard)
        if number < len(self.servers):  # the shard's now: when it ends, the zygote must see it hang up
            self.servers[number]._channel.sock.close()

    def _collect(self) -> None:
        """Read every shard's messages until each has ended; replay what is complete as it arrives."""
        open_fds = {shard.fd: shard for shard in self.shards}
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 1.0)
            for fd in ready:
                shard = open_fds[fd]
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    shard.buffer.extend(chunk)
                    for message in _messages(shard.buffer):
                        self._receive(shard, message)
                    continue
                del open_fds[fd]
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.close(shard.down)
                # Forgotten too: a spare's new pipe may get the same numbers, which it must not close
                shard.fd = shard.down = -1
                _, status = os.waitpid(shard.pid, 0)
                shard.exit_code = os.waitstatus_to_exitcode(status)
                self._lost(shard)
                if self.queue and shard.exit_code != 0:  # it died early: a new shard takes the rest
                    spare = Shard(items=self.queue.pop(0))
                    self.shards.append(spare)
                    self._fork(spare)
                    self._tell(spare, ("payload", self._payload))
                    open_fds[spare.fd] = spare
            self._replay()

    def _receive(self, shard: Shard, message: tuple) -> None:
        kind, index = message[0], message[1]
        if kind == "interrupted":
            raise KeyboardInterrupt
        if kind == "phases":
            self.take_phases(message[2])
            return
        if kind == "next":  # the shard finished a group: hand it the next one
            group = self.queue.pop(0) if self.queue else []
            shard.items.extend(group)
            self._tell(shard, ("group", group))
            return
        self.finished.setdefault(index, [])
        if kind == "finish":
            shard.done.add(index)
        self.finished[index].append(message)

    def _lost(self, shard: Shard) -> None:
        """A shard that ended before reporting every test (the learner's code ended the grader's process,
        say): each of its unreported tests gets a verdict that says so."""
        for index in shard.items:
            if index in shard.done:
                continue
            item = self.items[index]
            code = shard.exit_code
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            message = (
                "The grader's process running this test ended before it finished "
                f"({why}).\nexpected: the test to run to its verdict\n"
                "try:      check that tasks.py does not end the process that imports it (os._exit, "
                "sys.exit at import, a signal); then grade again."
            )
            report = pytest.TestReport(
                nodeid=item.nodeid,
                location=item.location,
                keywords={},
                outcome="failed",
                longrepr=message,
                when="call",
            )
            self.finished[index] = [
                ("start", index, item.location),
                (
                    "report",
                    index,
                    self.config.hook.pytest_report_to_serializable(config=self.config, report=report),
                ),
                ("finish", index, item.location, None, message),
            ]
            shard.done.add(index)

    def _replay(self, until: int | None = None) -> None:
        """Show every finished test in collection order, up to the first unfinished one (or ``until``)."""
        stop = len(self.items) if until is None else until
        while self.replayed < stop and self.replayed not in self.parent_runs:
            messages = self.finished.get(self.replayed)
            if not messages or messages[-1][0] != "finish":
                return
            item = self.items[self.replayed]
            hook = self.config.hook
            for message in messages:
                if message[0] == "start":
                    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
                elif message[0] == "report":
                    report = hook.pytest_report_from_serializable(config=self.config, data=message[2])
                    hook.pytest_runtest_logreport(report=report)
                elif message[0] == "finish":
                    self.take_result(item, message[3], message[4])
                    hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            del self.finished[self.replayed]
            self.replayed += 1

    def _stop_shards(self, grace: float = 20.0) -> None:
        """Ctrl-C: each shard got the SIGINT too (same process group) and tears its fixtures down; wait for
        that, bounded, then kill what is left. Their workers die with them (parent-death signals)."""
        live = [shard for shard in self.shards if shard.pid and shard.exit_code is None]
        for shard in live:  # a terminal's Ctrl-C reached them already; a shard ignores a second one
            with contextlib.suppress(ProcessLookupError):
                os.kill(shard.pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        for shard in live:
            while time.monotonic() < deadline:
                pid, _ = os.waitpid(shard.pid, os.WNOHANG)
                if pid:
                    break
                time.sleep(0.05)  # polling the shard's exit, bounded by the deadline above
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(shard.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(shard.pid, 0)
            shard.exit_code = -1
        for shard in self.shards:
            if shard.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(shard.fd)
        processes.sweep_strays()


class _Shard:
    """The child side: runs its tests with pytest's protocol and streams every report to the parent."""

    def __init__(self, runner: Runner, shard: Shard, fd: int) -> None:
        self.runner, self.shard, self.fd = runner, shard, fd
        self.config = runner.config
        self.index_of = {item.nodeid: i for i, item in enumerate(runner.items)}
        runner._shard_channel = self

    def main(self) -> None:
        code = 0
        try:
            self._become_shard()
            items = self.runner.items
            setup = self.runner.session._setupstate
            group = list(self.shard.items)  # its first group; the parent hands out the rest as it goes
            while group:
                setup.teardown_exact(items[group[0]])  # what the new group does not share (another module's)
                for n, index in enumerate(group):
                    # After a group's last test its module's fixtures stay for the next group, which may be
                    # of the same module; the plugin tears them down if the tests left the session dirty
                    # (celerylab.grading.plugin.pytest_runtest_teardown).
                    nextitem = items[group[n + 1]] if n + 1 < len(group) else self._keeper(index)
                    self.config.hook.pytest_runtest_protocol(item=items[index], nextitem=nextitem)
                group = self.runner.next_group()
            setup.teardown_exact(None)
            self.send(("phases", -1, self.runner.phases_of(self.config)))
        except KeyboardInterrupt:
            code = 130
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # one Ctrl-C is enough: let the teardown finish
            with contextlib.suppress(BaseException):
                self.runner.session._setupstate.teardown_exact(None)  # every fixture: workers stopped
            with contextlib.suppress(BaseException):
                self.send(("interrupted", -1))
        except BaseException:  # a grader bug: say so rather than vanish
            code = 70
            with contextlib.suppress(BaseException):
                import traceback

                os.write(2, traceback.format_exc().encode())
        finally:
            with contextlib.suppress(BaseException):
                processes.kill_all()
            os._exit(code)

    def _keeper(self, index: int) -> pytest.Item | SessionOnly:
        """The next item to name after a group's last test, not knowing the next group yet: another test of
        its module, so that pytest keeps the module's fixtures (its lab session); a module of one test
        keeps only the session's."""
        item = self.runner.items[index]
        for other in self.runner.items:
            if other is not item and other.fspath == item.fspath:
                return other
        return SessionOnly(self.runner.session)

    def _become_shard(self) -> None:
        """Forget what is the parent's (its children, terminal, captured output); die with the parent."""
        processes.prctl(processes.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
        processes.forget_inherited()
        for other in self.runner.shards:  # the parent's ends of the earlier shards' pipes
            for fd in (other.fd, other.down):
                if fd >= 0 and other is not self.shard:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        manager = self.config.pluginmanager
        capture = manager.getplugin("capturemanager")
        if capture is not None and capture._global_capturing is not None:  # the parent's capture files
            capture._global_capturing.stop_capturing()
            capture._global_capturing = None
            capture.start_global_capturing()
        reporter = manager.getplugin("terminalreporter")
        if reporter is not None:
            manager.unregister(reporter)
        manager.register(self, name="celerylab-shard")
        number = self.runner.shards.index(self.shard)
        self.runner.on_fork(number)
        mine = self.runner.servers[number] if number < len(self.runner.servers) else None
        for other in self.runner.servers:  # copies of the other owners' sockets: theirs, not ours
            if other is not mine:
                other._channel.sock.close()
        # The zygote the grade launched as it began; asked whether it lives only once it is ours (it is not
        # this process's child: a Popen's poll() from here would call it gone).
        if mine is not None and mine.hand_over().alive:
            forkserver.install(mine)
        else:
            serve_workers_from_here()

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message)
        _write_all(self.fd, framing.frame(data))

    # pytest hooks, in the shard
    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        self.send(("start", self.index_of[nodeid], location))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.send(("report", self.index_of[report.nodeid], data))

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        self.send(("finish", self.index_of[nodeid], location, self.runner.result_of(self.config, nodeid), ""))


def serve_workers_from_here() -> None:
    """This process's workers forked from a zygote forked from it now, while it is single-threaded and has
    Celery imported: each starts in a fraction of a second (celerylab.engine.forkserver)."""
    if forkserver.enabled() and threading.active_count() == 1:
        forkserver.install(forkserver.ForkServer.fork_here())


def _read_exactly(fd: int, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the parent of the shards is gone")
        data.extend(chunk)
    return bytes(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _messages(buffer: bytearray) -> Iterator[tuple]:
    for data in framing.unframe(buffer):
        yield pickle.loads(data)
