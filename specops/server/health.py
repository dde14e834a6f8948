"""The service's health state machine, read by /health and written by the model sync and
the SIGTERM handler:

    starting -> syncing -> loading -> warming -> ready
         any -> failed(reason)      any -> draining

`failed` and `draining` are final: a sync that finishes after SIGTERM does not turn the
server ready again, and a failure stays visible (with its reason) until the process ends.

Once ready, the model files the engine was loaded from are watched (checked on every read of
the state, a few stat calls): a file removed while serving (a folder deleted, a volume gone)
turns the state `failed` with the path. The engine keeps its copy in memory, so requests
already admitted finish; new ones are refused with 503 and the reason, since this replica could
not be restarted as it is.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from .metrics import Metrics

log = logging.getLogger("specops.server")

STATES = ("starting", "syncing", "loading", "warming", "ready", "failed", "draining")
FINAL = ("failed", "draining")


class Health:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._lock = threading.RLock()
        self._state, self._reason = "starting", None
        self._since = self._born = time.monotonic()
        self.models: dict = {}  # what is loaded, for /health; set once when ready
        self.watched: tuple[Path, ...] = ()  # the model files being served; set once when ready

    def set(self, state: str, reason: str | None = None) -> bool:
        """Move to `state`; False (and no change) once a final state is reached."""
        assert state in STATES, state
        with self._lock:
            if self._state in FINAL and state != "draining":
                return False
            if self._state == state:
                return True
            self._state, self._reason, self._since = state, reason, time.monotonic()
        self.metrics.model_ready.set(1 if state == "ready" else 0)
        (log.error if state == "failed" else log.info)("health: %s%s", state, f" ({reason})" if reason else "")
        return True

    @property
    def state(self) -> str:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def check_files(self) -> None:
        """Ready, but a model file is gone: failed, naming it."""
        if self._state == "ready":
            for path in self.watched:
                if not path.exists():
                    self.set("failed", f"serving: {path}: the model file was removed while serving (requests "
                                       "already admitted finish; restore it and restart the server)")
                    return

    def snapshot(self) -> dict:
        self.check_files()
        with self._lock:
            now = time.monotonic()
            return {"status": self._state, "reason": self._reason,
                    "state_age_s": round(now - self._since, 3), "uptime_s": round(now - self._born, 3)}
