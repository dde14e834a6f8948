"""The service's long-lived parts, wired together once per app (no module globals)."""
from __future__ import annotations

import time

from fastapi import Request

from ..config import Settings
from ..engine.llm_engine import Engine
from .backend import Backend
from .errors import Unavailable
from .health import Health
from .metrics import Metrics
from .model_sync import ModelSync
from .worker import EngineWorker


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(self.metrics)
        self.worker = EngineWorker(self.metrics, settings.queue_size)
        self.backend = Backend(settings, self.health, self.worker)
        self.sync = ModelSync(settings, self.health, self._on_ready)
        self.engine: Engine | None = None
        self.created = int(time.time())

    def _on_ready(self, engine: Engine) -> None:
        self.engine = engine
        self.worker.attach(engine)

    def ready_engine(self) -> Engine:
        """The engine if a generation can be served now, else 503 with the state."""
        self.backend.require_ready()
        if self.engine is None:  # ready implies an engine; kept as a guard, not a path
            raise Unavailable("no engine loaded", code="not_ready", state=self.health.state)
        return self.engine

    def start(self) -> None:
        self.sync.start()

    def stop(self) -> None:
        self.sync.stop(wait_s=0)  # a load still running gives up at its next check
        self.worker.stop()


async def get_service(request: Request) -> Service:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request,
    # and a burst of requests grows the pool by up to 40 threads (seen by `specops bench soak`)
    return request.app.state.service
