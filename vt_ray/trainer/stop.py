"""Signals end a run the way a preempted pod needs: the current step finishes, a checkpoint is written, and the
process exits with 128+signal; a watchdog bounds how long that may take.

Its own module because it is process plumbing (signal handlers, a watchdog thread, ``os._exit``), not training.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)


class GracefulStop:
    """SIGTERM/SIGINT: finish the current step, checkpoint, stop (the train command then exits 128+signal). A
    watchdog hard-exits with 128+signal after the grace period, so a stuck step cannot keep a preempted pod
    alive (the previous complete checkpoint stands); a second signal exits at once the same way.

    The handler only sets an event: it may run between any two bytecodes of the main thread, even inside a
    ``print`` to the same stream, where printing again raises "reentrant call". The watchdog thread reports the
    stop and keeps the deadline; :meth:`uninstall` disarms it once the stop is done.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = threading.Event()
        self.signum = 0
        self._disarmed = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._disarmed.clear()
        threading.Thread(target=self._watchdog, name="graceful-stop", daemon=True).start()

    def uninstall(self) -> None:
        self._disarmed.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested.is_set():  # second signal: stop now
            os._exit(128 + signum)
        self.signum = signum
        self.requested.set()

    def _watchdog(self) -> None:
        while not self.requested.wait(timeout=1.0):  # wakes to notice uninstall(); no timing depends on it
            if self._disarmed.is_set():
                return
        if self._disarmed.is_set():
            return
        log.warning("signal %d: finishing the current step, then checkpointing (grace %.0f s)", self.signum,
                    self.grace_s)
        print(f"[train] received signal {self.signum}: checkpointing after the current step "
              f"(grace {self.grace_s:.0f} s)", flush=True)
        if self._disarmed.wait(self.grace_s):  # a deadline, not a test synchronisation
            return
        print(f"[train] grace period of {self.grace_s:.0f} s exceeded: exiting without a final checkpoint", flush=True)
        os._exit(128 + self.signum)
