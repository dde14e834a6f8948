"""Timings measured at load, kept on disk per model file, CPU and settings, so a restart reads
them instead of timing again: the start-up pass-cost curve (specops.cost_cache) and the tiled
kernel's per-precision step times (batch_decoder's `auto` precision). One JSON file per key in
a folder (the kernel cache's `timings/`), written atomically; a folder that cannot be written
(a read-only volume) is only read."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def file_identity(path: Path | None) -> list | None:
    """A model file and its external data: names, sizes and modification times."""
    if path is None:
        return None
    files = sorted(p for p in Path(path).parent.glob(Path(path).name + "*") if p.is_file())
    return [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files]


def key_of(what: str, *files: Path | None, **settings) -> str:
    """24 hex digits of sha256 over `what` (the kind of timing), the files' identities, the CPU and `settings`."""
    ident = {"what": what, "files": [file_identity(f) for f in files], "cpu": cpu_name(), "cpus": os.cpu_count(),
             **settings}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load(folder: Path, key: str) -> dict | None:
    try:
        return json.loads((Path(folder) / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None


def save(folder: Path, key: str, data: dict) -> bool:
    """Write atomically; False when the folder cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, folder / f"{key}.json")
        return True
    except OSError:
        return False
