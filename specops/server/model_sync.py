"""Background model sync: resolve sources (local folder in place, or hub download), verify
files, load the engine, run one real warm-up generation, then hand the engine to the worker.

Runs in its own thread so the event loop (and /health/live) stays responsive during a
multi-gigabyte download. Any failure ends in health `failed` with the phase, the file and
the error; the process stays up to report it. `stop` abandons the load at its next check
(between phases, between timing passes): a process must not exit while this thread is inside
onnxruntime (its exit then aborts: "terminate called without an active exception").
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from ..budget import plan_for
from ..config import Settings
from ..engine.llm_engine import Engine
from ..engine.sampling_params import SamplingParams
from ..loader import LoadStopped, ModelPaths, kernel_cache, load_batch_engine, load_engine, resolve_kernel
from ..model_source import is_hub_id, sync_paths
from ..runtime.model_folder import ModelFolderError, ModelSpec, read_model_folder
from .health import Health

log = logging.getLogger("specops.server")

WARMUP_PROMPT = "def main():\n"


def verify_paths(paths: ModelPaths, checksums: bool) -> tuple[ModelSpec, ModelSpec | None]:
    """Expected files present, checksums matching where a folder has a manifest."""
    specs = [read_model_folder(f, verify=checksums) if f is not None else None for f in (paths.target, paths.draft)]
    for folder in (paths.target_tokenizer, paths.draft_tokenizer):
        if folder is not None and not (folder / "tokenizer.json").is_file():
            raise ModelFolderError(f"{folder / 'tokenizer.json'}: file is missing")
    return specs[0], specs[1]


def model_files(spec: ModelSpec) -> list[Path]:
    """The .onnx file and, when it has one, its external weights file."""
    data = spec.model_file.with_name(spec.model_file.name + ".data")
    return [spec.model_file] + ([data] if data.exists() else [])


def weights_note(specs: tuple[ModelSpec, ModelSpec | None], detail: str) -> str:
    """After a failed load: the external weights file of the model the error names (onnxruntime
    names the .onnx file and a tensor, while a truncated or corrupt .onnx.data is the usual cause)."""
    for spec in specs:
        if spec is not None and str(spec.model_file) in detail:
            data = model_files(spec)[1:]
            if data:
                return f" (its weights file: {data[0]}, {data[0].stat().st_size} bytes: truncated or corrupt?)"
    return ""


def cache_problem(settings: Settings) -> str:
    """After a failed sync that needed the hub: why the cache folder cannot take a download, or ''.
    Checked only then, so a read-only cache that already holds the models serves fine."""
    sources = (settings.target_model, settings.target_tokenizer, settings.draft_model, settings.draft_tokenizer)
    if not any(source and is_hub_id(source) for source in sources):
        return ""
    cache = Path(settings.model_cache_dir)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".specops-write-test-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        return f"; the model cache folder {cache} cannot be written (model_cache_dir): {err.strerror or err}"
    return ""


class ModelSync:
    def __init__(self, settings: Settings, health: Health, on_ready: Callable[[Engine], None]):
        self.settings, self.health, self.on_ready = settings, health, on_ready
        self.thread = threading.Thread(target=self._run, name="specops-model-sync", daemon=True)
        self.stopping = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self, wait_s: float) -> bool:
        """Ask the load to stop at its next check and wait up to `wait_s` for the thread to end.
        True when no load runs any more (finished, stopped, or never started)."""
        self.stopping.set()
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            self.thread.join(wait_s)
        return not self.thread.is_alive()

    def _check(self) -> None:
        if self.stopping.is_set():
            raise LoadStopped

    def _run(self) -> None:
        self._phase = "syncing"
        specs = None
        try:
            self.health.set("syncing")
            paths = sync_paths(self.settings)
            specs = verify_paths(paths, self.settings.verify_checksums)
            self._check()
            self._enter("loading")
            engine = self._load(paths, *specs)
            self._check()
            self._enter("warming")
            self._warm_up(engine)
            self._check()
            # a new dict, swapped in whole: /health may be serializing the old one right now
            self.health.models = {**self.health.models, **self._describe(paths, engine)}
            self.health.watched = tuple(f for spec in specs if spec is not None for f in model_files(spec))
            self.on_ready(engine)
            self.health.set("ready")
        except LoadStopped:  # the server is going down: health stays "draining"
            log.info("model sync stopped while %s: the server is shutting down", self._phase)
        except Exception as err:  # reported through /health and the log, never a silent exit
            log.exception("model sync failed while %s", self._phase)
            detail = str(err) if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {err}"
            if self._phase == "syncing":
                detail += cache_problem(self.settings)
            elif self._phase == "loading" and specs is not None:
                detail += weights_note(specs, detail)
            self.health.set("failed", f"{self._phase}: {detail}")

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self.health.set(phase)

    def _load(self, paths: ModelPaths, target_spec: ModelSpec, draft_spec: ModelSpec | None) -> Engine:
        """Memory plan first (refuses what cannot fit, or lowers the context cap), then sessions."""
        kernel, why_not = resolve_kernel(self.settings.kernel, target_spec, kernel_cache(self.settings),
                                        self.settings.kernel_build)
        if why_not:
            log.warning("target kernel: stock onnxruntime (%s)", why_not)
        plan = plan_for(self.settings, target_spec, draft_spec, target_kernel=kernel)
        log.info("%s", plan.summary())
        self.health.models = {"memory": plan.to_dict(), "kernel": {"target": kernel, "note": why_not}}
        # checksums were verified while syncing: do not hash the weights twice
        settings = self.settings.model_copy(update={"verify_checksums": False, "context_length": plan.context_cap,
                                                    "max_batch": plan.max_batch,
                                                    # stock where it cannot tile; else the setting as given
                                                    # (auto still falls back if tiling fails at load)
                                                    "kernel": "stock" if kernel == "stock" else self.settings.kernel})
        if settings.max_batch > 1 and target_spec.layout == "builder" and target_spec.share_past_present:
            return load_batch_engine(settings, paths, stop=self.stopping)
        return load_engine(settings, paths, stop=self.stopping)

    def _warm_up(self, engine: Engine) -> None:
        if self.settings.warmup_tokens == 0:
            return
        t0 = time.monotonic()
        params = SamplingParams(max_new_tokens=self.settings.warmup_tokens, speculator=self.settings.speculator,
                                k_draft=self.settings.k_draft)
        result = engine.generate(engine.tokenizer.encode(WARMUP_PROMPT), params)
        log.info("warm-up: %d tokens in %.2f s", len(result.token_ids), time.monotonic() - t0)

    def _describe(self, paths: ModelPaths, engine: Engine) -> dict:
        target = engine.target
        kernel = {"target": target.kernel, "note": target.kernel_note, "precision": target.precision,
                  "path": target.kernel_path, "attention": target.attention,
                  "precision_ms": dict(target.precision_ms)}
        return {"target": str(paths.target), "draft": str(paths.draft) if paths.draft else None, "kernel": kernel,
                "context_cap": engine.capacity, "chat_template": engine.tokenizer.has_chat_template,
                "default_speculator": self.settings.speculator}
