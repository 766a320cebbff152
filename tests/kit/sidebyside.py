"""Notebooks side by side, each still its own pytest test.

A notebook's run is mostly waiting on real Celery workers, not CPU, so running them one after another
leaves the machine idle. A module fixture makes a :class:`SideBySide`: a thread of its own runs one
coroutine per selected notebook on one asyncio loop, a few at a time, and each notebook's test waits for
its own verdict (its result, or the exception that says what went wrong there). Notebooks start in the
tests' order, so a test waits for no notebook started after its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

AT_ONCE_ENV = "CELERYLAB_NOTEBOOKS_AT_ONCE"
# Measured on 2 shared cores: 3 at a time keeps the cores busy while each notebook waits on its workers; a
# 4th only lengthens every notebook's run. 1 runs them one after another (to tell a race from a bug).
AT_ONCE = 3

Run = Callable[[Path], Awaitable[Any]]


def default_at_once() -> int:
    """``$CELERYLAB_NOTEBOOKS_AT_ONCE``, else 3."""
    return max(1, int(os.environ.get(AT_ONCE_ENV, AT_ONCE)))


def heaviest_first(paths: Iterable[Path]) -> list[Path]:
    """Highest section first: from 04 on a notebook runs a lab's scenarios on real workers (measured in the
    browser: 10-40 s each, 17_shutdown the longest), 00-03 take a few seconds. Starting the long ones first
    lets the short ones fill the slots at the end, instead of a long one running alone."""
    return sorted(paths, key=lambda p: p.stem, reverse=True)


def selected(request: Any, test: str) -> list[Path]:
    """The notebooks (``path`` parameter) of ``test`` in this module that this pytest run will run, in its
    order: only those are started (``-k`` and deselection respected)."""
    return [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", None) == test and getattr(item, "module", None) is request.module
    ]


class SideBySide:
    """Runs ``session()``'s coroutine for each of ``paths``, ``at_once`` at a time, in a thread of its own.

    ``session`` is an async context manager entered once on the thread's loop (a browser, say) that yields
    the coroutine function run for each path. One notebook's failure is that notebook's verdict only; the
    others go on. :meth:`stop` cancels whatever still runs (a test run interrupted or stopped at a first
    failure), so each run's own cleanup (its ``finally``) happens before the fixtures under it go away."""

    def __init__(
        self,
        paths: Iterable[Path],
        session: Callable[[], AbstractAsyncContextManager[Run]],
        at_once: int | None = None,
        name: str = "notebooks side by side",
    ) -> None:
        self.paths = list(paths)
        self.at_once = at_once or default_at_once()
        self._session = session
        self._verdicts = {path: concurrent.futures.Future() for path in self.paths}
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._started = threading.Event()

    def start(self) -> SideBySide:
        self._thread.start()
        return self

    def verdict(self, path: Path) -> Any:
        """What ``path``'s run returned; or its exception raised here, with its own traceback. Bounded by
        the run's own waits (and the test's timeout)."""
        return self._verdicts[path].result()

    def stop(self, seconds: float = 120) -> None:
        self._started.wait(seconds)
        if self._loop is not None and self._task is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._task.cancel)
            except RuntimeError:  # the loop closed in between: nothing left to cancel
                pass
        self._thread.join(seconds)

    def _main(self) -> None:
        failure: BaseException
        try:
            asyncio.run(self._all())
            failure = RuntimeError("the side-by-side run ended without this notebook's verdict")
        except asyncio.CancelledError:
            failure = RuntimeError("the side-by-side run was stopped before this notebook's verdict")
        except BaseException as exc:  # the session itself failed (say, the browser did not start)
            failure = exc
        finally:
            self._started.set()
        for verdict in self._verdicts.values():
            if not verdict.done():
                verdict.set_exception(failure)

    async def _all(self) -> None:
        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        self._started.set()
        waiting = list(self.paths)
        if not waiting:
            return
        async with self._session() as run:

            async def slot() -> None:
                while waiting:
                    path = waiting.pop(0)
                    try:
                        result = await run(path)
                    except Exception as exc:  # that notebook's verdict; a cancellation ends them all
                        self._verdicts[path].set_exception(exc)
                    else:
                        self._verdicts[path].set_result(result)

            await asyncio.gather(*(slot() for _ in range(min(self.at_once, len(waiting)))))
