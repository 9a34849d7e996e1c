"""leading(): run work only inside a term, and tell it when the term ends (blocking flavour; the
asyncio one, `aio.AsyncLeading`, shares `FollowingATerm` with it)."""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._term import Flag, Status, Term, TermEnded, bind_term

if TYPE_CHECKING:
    from ._blocking import Sidecar

F = TypeVar("F", bound=Callable[..., Any])
RETRY_S = 0.2

# Why a term ends, as `Leading.reason` says.
DEADLINE = "deadline reached"
STANDBY = "the sidecar no longer leads"
ANOTHER_TERM = "another term began"
DRAINING = "draining requested"


class FollowingATerm:
    """What the blocking and asyncio `leading()` share, no I/O: the term with its latest deadline,
    `check()`, how a newer `/leader` answer moves or ends it (`observe`), and how the end is
    recorded once (`_record_end`). Each flavour says how the work is told (`_end`), and the
    blocking one guards the state with a lock (its watcher is a thread)."""

    ended: Flag
    reason: str | None
    draining: bool
    _term: Term | None

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    @property
    def term(self) -> Term:
        """The term, with its latest known deadline (brought forward to its end once it ended)."""
        if self._term is None:
            raise RuntimeError("leading() not entered")
        return self._term

    def current(self) -> Term | None:
        return self._term

    def check(self) -> Term:
        """The term if it still holds, else TermEnded (the deadline is judged here, by the clock,
        also when the watcher had no chance to run: a process paused past its term)."""
        term = self.term
        if not self.ended.is_set() and not term.is_valid():
            self._end(DEADLINE)
        if self.ended.is_set():
            raise TermEnded(self.reason)
        return term

    def _end(self, reason: str) -> None:
        raise NotImplementedError

    def _record_end(self, reason: str, now: float | None = None) -> bool:
        """Records why the term ended, once; True for the call that did. A drain keeps the
        deadline (the work may finish); any other end brings it forward to now."""
        with self._guard():
            if self.ended.is_set():
                return False
            self.reason = reason
            if reason != DRAINING and self._term is not None:
                self._term = self._term.ended_at(now)
            self.ended.set()
        return True

    def observe(self, current: Status, asked_at_monotonic: float | None = None) -> None:
        """Takes in a newer `/leader` answer: a later deadline of the same term, or its end."""
        seen = Term.from_status(current, asked_at_monotonic=asked_at_monotonic)
        if seen is None:
            self._end(STANDBY)
            return
        if not self.term.same_term(seen):
            self._end(ANOTHER_TERM)
            return
        with self._guard():
            if not self.ended.is_set() or self.reason == DRAINING:
                if seen.valid_until_monotonic > self.term.valid_until_monotonic:
                    self._term = seen
        if current.get("draining") is True:
            self.draining = True
            self._end(DRAINING)


class Leading(FollowingATerm):
    """Context manager and decorator: waits for a term, runs the work inside it, and when the term
    ends (its deadline reached on the monotonic clock, a newer status showing standby or another
    token, or draining requested for a graceful hand-over) sets `ended` (a threading.Event), calls
    `on_end(reason)` and makes `check()` raise TermEnded. Blocking code cannot be interrupted from
    outside, so the work must look: `lead.check()` between steps, or `lead.ended.wait(...)` as its
    sleep. A watcher thread follows the sidecar by long-poll (`GET /leader?wait=&since=`), which
    answers at once on a role change and otherwise after `refresh_s` with the renewed deadline.

    On leaving: if the sidecar asked to drain (or `resign_on_exit`), the term is resigned, so a
    waiting hand-over goes on at once. TermEnded raised by `check()` leaves the block as it is.

        with Sidecar().leading() as lead:
            for item in work:
                lead.check()
                write(item, fencing_token=lead.term.fencing_token)
    """

    def __init__(self, sidecar: Sidecar, wait_timeout_s: float | None = None, refresh_s: float = 1.0,
                 resign_on_exit: bool = False, sit_out_s: float = 0,
                 on_end: Callable[[str], None] | None = None) -> None:
        self.sidecar = sidecar
        self.wait_timeout_s = wait_timeout_s
        self.refresh_s = refresh_s
        self.resign_on_exit = resign_on_exit
        self.sit_out_s = sit_out_s
        self.on_end = on_end
        self.ended = threading.Event()
        self.reason: str | None = None
        self.draining = False
        self._term: Term | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._bound: Any = None

    def _guard(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock

    def sleep(self, seconds: float) -> bool:
        """Sleeps up to `seconds`, waking early when the term ends; True if it ended."""
        end = time.monotonic() + seconds
        while True:
            left = min(end - time.monotonic(), self.term.remaining_s())
            if left <= 0 or self.ended.wait(left):
                return self.ended.is_set() or not self.term.is_valid()

    def __enter__(self) -> Leading:
        self._term = self.sidecar.wait_for_term(self.wait_timeout_s)
        self._watcher = threading.Thread(target=self._watch, name="lease-sidecar-term-watcher", daemon=True)
        self._watcher.start()
        self._bound = bind_term(self.current)
        self._bound.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._bound is not None:
            self._bound.__exit__(None, None, None)
            self._bound = None
        if self._watcher is not None:
            self._watcher.join(self.sidecar.request_timeout_s + self.refresh_s + 1)
        if self.draining or self.resign_on_exit:
            self.sidecar.resign(self.sit_out_s)

    def __call__(self, function: F) -> F:
        """As a decorator: each call waits for a term and runs inside it (`current_term()` tells
        the token); TermEnded leaves the call as it is."""

        @functools.wraps(function)
        def in_a_term(*args: Any, **kwargs: Any) -> Any:
            with Leading(self.sidecar, self.wait_timeout_s, self.refresh_s, self.resign_on_exit,
                         self.sit_out_s, self.on_end):
                return function(*args, **kwargs)

        return in_a_term  # type: ignore[return-value]

    def _end(self, reason: str, now: float | None = None) -> None:
        if not self._record_end(reason, now):
            return
        if self.on_end is not None:
            try:
                self.on_end(reason)
            except Exception:  # the app's hook failed: the work was still told (ended is set)
                pass

    def _watch(self) -> None:
        since: int | None = None
        while not self._stop.is_set():
            left = self.term.remaining_s()
            if left <= 0:
                self._end(DEADLINE)
                return
            wait_s = max(0.05, min(self.refresh_s, left))
            current = self.sidecar.status(wait_s if since is not None else 0, since)
            if self._stop.is_set():
                return
            if current is None:
                self._stop.wait(min(RETRY_S, self.term.remaining_s()))
                continue
            since = current.get("version")
            self.observe(current)
            if self.ended.is_set() and self.reason != DRAINING:
                return

