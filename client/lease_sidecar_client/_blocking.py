"""The blocking client on the standard library's urllib, and the functions sidecar.client always had."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from ._term import Status, Term

DEFAULT_URL = "http://127.0.0.1:4040"
LONG_POLL_S = 30.0
"""How long one long-poll request waits for a change before asking again."""
RETRY_S = 1.0


def _get(base_url: str, path: str, timeout_s: float) -> Status | None:
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}{path}", timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _post(base_url: str, path: str, body: dict[str, Any] | None, request_timeout_s: float) -> Status | None:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=request_timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def leader_query(wait_s: float = 0, since: int | None = None) -> str:
    if not wait_s:
        return "/leader"
    return f"/leader?wait={wait_s:g}" + (f"&since={since}" if since is not None else "")


def heartbeat_body(schedule_count: int | None = None, next_due_task: str | None = None,
                   detail: dict[str, Any] | None = None, **info: Any) -> dict[str, Any] | None:
    """The seed's `update_info` fields (`schedule_count`, `next_due_task`), then anything else."""
    body: dict[str, Any] = {}
    if schedule_count is not None:
        body["schedule_count"] = schedule_count
    if next_due_task is not None:
        body["next_due_task"] = next_due_task
    if detail is not None:
        body["detail"] = detail
    body.update({key: value for key, value in info.items() if value is not None})
    return body or None


def sit_out_query(sit_out_s: float | None) -> str:
    return "" if sit_out_s is None else f"?sit_out={sit_out_s:g}"


def call_info(info: Callable[[], dict[str, Any] | None] | None) -> dict[str, Any]:
    return dict(info() or {}) if info is not None else {}


def leads(current: Status | None) -> bool:
    """Whether a `/leader` answer says this pod leads (None: the sidecar could not be asked)."""
    return bool(current and current.get("is_leader") is True)


def term_to_start_in(current: Status, asked_at_monotonic: float | None) -> Term | None:
    """The term of a `/leader` answer if work may start in it: leading, time left, not draining."""
    term = Term.from_status(current, asked_at_monotonic=asked_at_monotonic)
    return term if term is not None and term.is_valid() and not current.get("draining") else None


class Sidecar:
    """The sidecar on localhost, asked with blocking calls. Never raises for the sidecar's
    absence: an unreachable sidecar reads as "not leader" (None)."""

    def __init__(self, base_url: str = DEFAULT_URL, request_timeout_s: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout_s = request_timeout_s

    def status(self, wait_s: float = 0, since: int | None = None) -> Status | None:
        """The /leader JSON, or None if the sidecar could not be asked."""
        return _get(self.base_url, leader_query(wait_s, since), self.request_timeout_s + wait_s)

    def status_and_term(self, wait_s: float = 0, since: int | None = None) -> tuple[Status | None, Term | None]:
        asked_at = time.monotonic()
        current = self.status(wait_s, since)
        return current, Term.from_status(current, asked_at_monotonic=asked_at if not wait_s else None)

    def term(self) -> Term | None:
        """This pod's current term, or None unless it leads."""
        return self.status_and_term()[1]

    def is_leader(self) -> bool:
        return leads(self.status())

    def heartbeat(self, schedule_count: int | None = None, next_due_task: str | None = None,
                  **info: Any) -> Status | None:
        """POST /heartbeat: the app is alive, with the seed's `update_info` fields. Never raises:
        the /leader JSON, or None if the sidecar could not be told (or refused the body)."""
        return _post(self.base_url, "/heartbeat", heartbeat_body(schedule_count, next_due_task, **info),
                     self.request_timeout_s)

    def resign(self, sit_out_s: float | None = None) -> Status | None:
        """POST /leader/resign: end this pod's term now (`sit_out_s=0`: may campaign again at once).
        Never raises: the /leader JSON (standby), or None."""
        return _post(self.base_url, "/leader/resign" + sit_out_query(sit_out_s), None, self.request_timeout_s)

    def changes(self, wait_s: float = LONG_POLL_S) -> Iterator[Status]:
        """Yields the current status, then each change of `version` (long-poll, no busy polling)."""
        since: int | None = None
        while True:
            current = self.status(wait_s if since is not None else 0, since)
            if current is None:
                time.sleep(RETRY_S)
                since = None
                continue
            if current.get("version") != since:
                since = current.get("version")
                yield current

    def wait_for_term(self, timeout_s: float | None = None) -> Term:
        """Blocks until this pod leads with time left; TimeoutError after `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        since: int | None = None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no term within {timeout_s}s")
            wait = LONG_POLL_S if left is None else max(0.05, min(LONG_POLL_S, left))
            asked_at = time.monotonic()
            current = self.status(wait if since is not None else 0, since)
            if current is None:
                time.sleep(min(RETRY_S, wait))
                since = None
                continue
            term = term_to_start_in(current, asked_at if since is None else None)
            if term is not None:
                return term
            since = current.get("version")

    def leading(self, wait_timeout_s: float | None = None, refresh_s: float = 1.0,
                resign_on_exit: bool = False, sit_out_s: float = 0) -> Any:
        """`with sidecar.leading() as lead:` (or `@sidecar.leading()`): waits for a term, runs the
        work inside it, and signals the work when the term ends (see `Leading`)."""
        from ._leading import Leading

        return Leading(self, wait_timeout_s=wait_timeout_s, refresh_s=refresh_s,
                       resign_on_exit=resign_on_exit, sit_out_s=sit_out_s)


# ---------------------------------------------------------------- sidecar.client's functions


def status(base_url: str = DEFAULT_URL, wait_s: float = 0, since: int | None = None,
           request_timeout_s: float = 2.0) -> Status | None:
    return Sidecar(base_url, request_timeout_s).status(wait_s, since)


def is_leader(base_url: str = DEFAULT_URL) -> bool:
    return Sidecar(base_url).is_leader()


def changes(base_url: str = DEFAULT_URL, wait_s: float = LONG_POLL_S) -> Iterator[Status]:
    return Sidecar(base_url).changes(wait_s)


def wait_until_leader(base_url: str = DEFAULT_URL, timeout_s: float | None = None) -> Status:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for current in changes(base_url, wait_s=min(LONG_POLL_S, timeout_s or LONG_POLL_S)):
        if current["is_leader"]:
            return current
        if deadline is not None and time.monotonic() >= deadline:
            break
    raise TimeoutError(f"not leader within {timeout_s}s")


def heartbeat(base_url: str = DEFAULT_URL, schedule_count: int | None = None, next_due_task: str | None = None,
              detail: dict[str, Any] | None = None, request_timeout_s: float = 2.0) -> Status | None:
    """POST /heartbeat. Never raises: the /leader JSON, or None if the sidecar could not be told."""
    return _post(base_url, "/heartbeat", heartbeat_body(schedule_count, next_due_task, detail), request_timeout_s)


def resign(base_url: str = DEFAULT_URL, sit_out_s: float | None = None,
           request_timeout_s: float = 2.0) -> Status | None:
    """POST /leader/resign. Never raises: the /leader JSON (standby), or None."""
    return _post(base_url, "/leader/resign" + sit_out_query(sit_out_s), None, request_timeout_s)


def remaining_s(current: Status | None, now_monotonic: float | None = None) -> float:
    """Seconds this leader may still do leader work by `current` (0 unless leader), on this
    process's monotonic clock (precedence of the fields: see `Term`)."""
    term = Term.from_status(current, now_monotonic=now_monotonic)
    return 0.0 if term is None else term.remaining_s(now_monotonic)


def still_valid(current: Status | None, now_monotonic: float | None = None) -> bool:
    """Leader, and its deadline not yet passed."""
    return remaining_s(current, now_monotonic) > 0


class Heartbeats:
    """The background form: a daemon thread that heartbeats every `interval_s` until `stop()`.

        beats = Heartbeats(info=lambda: {"schedule_count": len(jobs)}).start()
        ...
        beats.stop()

    A thread beats even while the app's own work is stuck; if that matters, call `heartbeat()`
    from the work loop itself instead (or have `info` raise when the work is stuck: a beat is
    skipped whenever `info` raises).
    """

    def __init__(self, base_url: str = DEFAULT_URL, interval_s: float = 1.0,
                 info: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self.base_url = base_url
        self.interval_s = interval_s
        self.info = info
        self.last: Status | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-sidecar-heartbeats", daemon=True)

    def start(self) -> Heartbeats:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.last = heartbeat(self.base_url, **call_info(self.info))
            except Exception:  # the app's info hook failed: skip this beat, never the thread
                self.last = None
            self._stopped.wait(self.interval_s)
