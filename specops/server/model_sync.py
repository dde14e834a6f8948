"""Background model sync: resolve sources (local folder in place, or hub download), verify
files, load the engine, run one real warm-up generation, then hand the engine to the worker.

Runs in its own thread so the event loop (and /health/live) stays responsive during a
multi-gigabyte download. Any failure ends in health `failed` with the phase, the file and
the error; the process stays up to report it.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

from ..budget import plan_for
from ..config import Settings
from ..engine.llm_engine import Engine
from ..engine.sampling_params import SamplingParams
from ..loader import ModelPaths, load_engine
from ..runtime.model_folder import ModelFolderError, ModelSpec, read_model_folder
from .health import Health

log = logging.getLogger("specops.server")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
WARMUP_PROMPT = "def main():\n"


def is_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not Path(source).exists()


def _hub_download(repo_id: str, subfolder: str, files: tuple[str, ...] | None, settings: Settings) -> Path:
    """snapshot_download of only the files needed (the subfolder, or just tokenizer files)."""
    from huggingface_hub import snapshot_download  # only a hub source needs it

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    patterns = [prefix + f for f in files] if files else [prefix + "*"]
    for attempt in range(settings.sync_retries + 1):
        try:
            t0 = time.monotonic()
            log.info("sync: downloading %s (%s) into %s", repo_id, ", ".join(patterns), settings.model_cache_dir)
            root = Path(snapshot_download(repo_id, allow_patterns=patterns, cache_dir=settings.model_cache_dir))
            log.info("sync: %s ready in %.1f s", repo_id, time.monotonic() - t0)
            return root / subfolder if subfolder else root
        except Exception as err:  # network, auth, missing repo: retried, then reported
            if attempt == settings.sync_retries:
                raise ModelFolderError(f"{repo_id}: download failed after {attempt + 1} attempt(s): "
                                       f"{type(err).__name__}: {err}") from None
            log.warning("sync: %s failed (%s); retrying in %.0f s", repo_id, err, settings.sync_retry_delay_s)
            time.sleep(settings.sync_retry_delay_s)
    raise AssertionError("unreachable")


def resolve_source(source: str, subfolder: str, settings: Settings, files: tuple[str, ...] | None = None) -> Path:
    """A local folder is used in place; an `owner/name` hub id is downloaded to the cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / subfolder if subfolder else path
    if is_hub_id(source):
        return _hub_download(source, subfolder, files, settings)
    raise ModelFolderError(f"{source}: model folder does not exist (and it is not a hub repo id owner/name)")


def sync_paths(settings: Settings) -> ModelPaths:
    """Resolve all four sources (model and tokenizer, target and draft) to local folders."""
    target = resolve_source(settings.target_model, settings.target_subfolder, settings)
    target_tok = (resolve_source(settings.target_tokenizer, "", settings, TOKENIZER_FILES)
                  if settings.target_tokenizer else target)
    if settings.draft_model.lower() in ("", "none"):
        return ModelPaths(target, target_tok, None, None)
    draft = resolve_source(settings.draft_model, settings.draft_subfolder, settings)
    draft_tok = (resolve_source(settings.draft_tokenizer, "", settings, TOKENIZER_FILES)
                 if settings.draft_tokenizer else draft)
    return ModelPaths(target, target_tok, draft, draft_tok)


def verify_paths(paths: ModelPaths, checksums: bool) -> tuple[ModelSpec, ModelSpec | None]:
    """Expected files present, checksums matching where a folder has a manifest."""
    specs = [read_model_folder(f, verify=checksums) if f is not None else None for f in (paths.target, paths.draft)]
    for folder in (paths.target_tokenizer, paths.draft_tokenizer):
        if folder is not None and not (folder / "tokenizer.json").is_file():
            raise ModelFolderError(f"{folder / 'tokenizer.json'}: file is missing")
    return specs[0], specs[1]


class ModelSync:
    def __init__(self, settings: Settings, health: Health, on_ready: Callable[[Engine], None]):
        self.settings, self.health, self.on_ready = settings, health, on_ready
        self.thread = threading.Thread(target=self._run, name="specops-model-sync", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        self._phase = "syncing"
        try:
            self.health.set("syncing")
            paths = sync_paths(self.settings)
            specs = verify_paths(paths, self.settings.verify_checksums)
            self._enter("loading")
            engine = self._load(paths, *specs)
            self._enter("warming")
            self._warm_up(engine)
            # a new dict, swapped in whole: /health may be serializing the old one right now
            self.health.models = {**self.health.models, **self._describe(paths, engine)}
            self.on_ready(engine)
            self.health.set("ready")
        except Exception as err:  # reported through /health and the log, never a silent exit
            log.exception("model sync failed while %s", self._phase)
            detail = str(err) if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {err}"
            self.health.set("failed", f"{self._phase}: {detail}")

    def _enter(self, phase: str) -> None:
        self._phase = phase
        self.health.set(phase)

    def _load(self, paths: ModelPaths, target_spec: ModelSpec, draft_spec: ModelSpec | None) -> Engine:
        """Memory plan first (refuses what cannot fit, or lowers the context cap), then sessions."""
        plan = plan_for(self.settings, target_spec, draft_spec)
        log.info("%s", plan.summary())
        self.health.models = {"memory": plan.to_dict()}
        # checksums were verified while syncing: do not hash the weights twice
        return load_engine(self.settings.model_copy(update={"verify_checksums": False,
                                                            "context_length": plan.context_cap}), paths)

    def _warm_up(self, engine: Engine) -> None:
        if self.settings.warmup_tokens == 0:
            return
        t0 = time.monotonic()
        params = SamplingParams(max_new_tokens=self.settings.warmup_tokens, speculator=self.settings.speculator,
                                k_draft=self.settings.k_draft)
        result = engine.generate(engine.tokenizer.encode(WARMUP_PROMPT), params)
        log.info("warm-up: %d tokens in %.2f s", len(result.token_ids), time.monotonic() - t0)

    def _describe(self, paths: ModelPaths, engine: Engine) -> dict:
        return {"target": str(paths.target), "draft": str(paths.draft) if paths.draft else None,
                "context_cap": engine.capacity, "chat_template": engine.tokenizer.has_chat_template,
                "default_speculator": self.settings.speculator}
