"""SIGTERM / SIGINT: drain, then let the HTTP server exit cleanly (exit code 0).

uvicorn's own handler stops listening at once and, after shutdown, re-raises the signal
(so the process dies by SIGTERM, not exit 0). Ours runs first instead:

1. health -> draining (readiness 503, new generation requests 503);
2. queued and running requests finish, for at most `drain_grace_s`; then the rest are
   cancelled (running) or refused with 503 (queued) -- none is dropped silently;
3. a model load still running is asked to stop (it checks between phases and between timing
   passes) and given `drain_grace_s` to do so; one that cannot (inside a session's creation for
   longer) ends the process at once with exit code 0 (`os._exit`): exiting normally while another
   thread is inside onnxruntime aborts the process ("terminate called without an active
   exception", SIGABRT), which is what a pod stopped during its start-up used to do;
4. the server is told to exit: `should_exit` on uvicorn's Server (no re-raised signal), or
   the previous handler when the server is not uvicorn.

A second SIGINT (Ctrl-C twice) skips the wait through the previous handler's force path; a
repeated SIGTERM is ignored (`timeout`, `kill -TERM -<pgid>` deliver it twice at once).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from .service import Service

log = logging.getLogger("specops.server")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainOnSignal:
    def __init__(self, service: Service):
        self.service = service
        self.previous: dict[int, object] = {}
        self.draining = False

    def install(self) -> bool:
        """Chain in front of the current handlers; only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM will not drain")
            return False
        for sig in SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return True

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self.draining and sig == signal.SIGINT:  # Ctrl-C again: stop waiting
            log.warning("second SIGINT: exiting without waiting")
            self.service.worker.stop(join_s=0)
            self._exit(sig, frame, force=True)
            return
        if self.draining:
            return
        # A signal handler interrupts the main thread anywhere, maybe inside a held lock:
        # everything that takes a lock happens in the drain thread.
        self.draining = True
        threading.Thread(target=self._drain, args=(sig,), name="specops-drain", daemon=True).start()

    def _drain(self, sig: int) -> None:
        worker = self.service.worker
        self.service.health.set("draining")
        log.info("%s: draining (grace %.0f s)", signal.Signals(sig).name, self.service.settings.drain_grace_s)
        if worker.drain(self.service.settings.drain_grace_s):
            log.info("drained: every request finished")
        else:
            queued, running = worker.load()
            log.warning("grace period over: cancelling %d running, refusing %d queued", running, queued)
        worker.stop()
        if not self.service.sync.stop(self.service.settings.drain_grace_s):
            log.warning("the model load did not stop within %g s: exiting now", self.service.settings.drain_grace_s)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self._exit(sig, None, force=False)

    def _exit(self, sig: int, frame: FrameType | None, force: bool) -> None:
        previous = self.previous.get(sig)
        server = getattr(previous, "__self__", None)
        if not force and server is not None and hasattr(server, "should_exit"):
            server.should_exit = True  # uvicorn.Server: a clean exit, no re-raised signal
        elif callable(previous):
            previous(sig, frame)
        else:  # SIG_DFL / SIG_IGN: restore it and deliver the signal again
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(sig)
