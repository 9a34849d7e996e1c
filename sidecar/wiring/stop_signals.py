"""SIGTERM and SIGINT, caught from the first line of `main()` to the process's exit.

README promises that SIGTERM at any moment exits 0 with `standby` in the role file. Python's
default action for SIGTERM kills the process (exit 143), and the heavy imports and the Kubernetes
client set-up take most of a second, so the handler is installed before any of that, remembers
the request, and hands it to the event loop once `run()` attaches one. Unlike
`loop.add_signal_handler`, it stays installed after the loop closes, so a late signal cannot kill
the process while it exits either.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio  # not imported at run time: this module loads before anything slow

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        """The first stop signal, or None."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_stop: Callable[[], None] | None = None

    @classmethod
    def install(cls) -> StopSignals:
        signals = cls()
        for signum in STOP_SIGNALS:
            signal.signal(signum, signals._note)
        return signals

    @staticmethod
    def uninstall() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        """From now on a stop signal calls `on_stop` in `loop`; at once if one already came."""
        self._loop, self._on_stop = loop, on_stop
        if self.received is not None:
            on_stop()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, wherever it was: only hand over.
        if self.received is None:
            self.received = signum
        if self._loop is not None and self._on_stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_stop)
            except RuntimeError:
                pass  # the loop is closed: the process is already on its way out
