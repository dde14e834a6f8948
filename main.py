"""ASGI entry point: `uvicorn main:app --host 0.0.0.0 --port 8888` from the repository root.

Settings come from SPECOPS_* environment variables (see docs/service.md); `specops serve`
runs the same app with settings from command-line flags.
"""
from specops.server.app import create_app

app = create_app()
