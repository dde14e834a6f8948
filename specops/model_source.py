"""Where models come from: a local folder is used in place; an `owner/name` hub repo id
(with an optional subfolder) is downloaded with huggingface_hub into the cache folder, only
the files needed. Shared by the service's background sync and the command line."""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from .config import Settings
from .loader import ModelPaths
from .prepare import CATALOG, resolve_prepared
from .runtime.model_folder import ModelFolderError

log = logging.getLogger("specops.sync")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")


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
    """A prepared model's name maps to its folder; a local folder is used in place; an
    `owner/name` hub id is downloaded to the cache."""
    if source in CATALOG:
        return resolve_prepared(source, settings.model_cache_dir)
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
