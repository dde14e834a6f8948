"""The HTTP service: FastAPI app, admission queue, model sync, metrics."""
