"""Settings -> a ready Engine: read folders, open sessions, bridge vocabularies, calibrate."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Settings
from .engine.adaptive import CostModel
from .engine.llm_engine import Engine
from .runtime.decoder import Decoder, SessionConfig
from .runtime.model_folder import read_model_folder
from .runtime.tokenizer import TextTokenizer
from .speculators.draft import DraftModelSpeculator
from .speculators.ngram import NgramSpeculator
from .speculators.vocab_bridge import VocabBridge

MAX_K = 16


@dataclass
class ModelPaths:
    target: Path
    target_tokenizer: Path
    draft: Path | None
    draft_tokenizer: Path | None


def local_paths(settings: Settings) -> ModelPaths:
    """Settings naming local folders -> paths (hub ids are resolved by the service's sync)."""
    target = Path(settings.target_model)
    draft = None if settings.draft_model.lower() in ("", "none") else Path(settings.draft_model)
    return ModelPaths(target, Path(settings.target_tokenizer or target),
                      draft, Path(settings.draft_tokenizer or draft) if draft else None)


def load_engine(settings: Settings, paths: ModelPaths | None = None, calibrate: bool = True) -> Engine:
    paths = paths or local_paths(settings)
    cap = settings.context_length or None
    target_spec = read_model_folder(paths.target, settings.verify_checksums)
    target = Decoder(target_spec, SessionConfig(settings.intra_op_threads, settings.allow_spinning), cap)
    tokenizer = TextTokenizer(paths.target_tokenizer)
    draft = None
    if paths.draft is not None:
        draft_spec = read_model_folder(paths.draft, settings.verify_checksums)
        draft_tok = TextTokenizer(paths.draft_tokenizer)
        bridge = VocabBridge(tokenizer, draft_tok, target_spec.vocab_size, draft_spec.vocab_size)
        draft_decoder = Decoder(draft_spec, SessionConfig(settings.draft_intra_op_threads, settings.allow_spinning),
                                target.capacity)
        draft = DraftModelSpeculator(draft_decoder, bridge)
    engine = Engine(target, tokenizer, draft, NgramSpeculator(settings.ngram_min, settings.ngram_max),
                    prefill_chunk=settings.prefill_chunk)
    if calibrate:
        engine.cost = measure_costs(engine, MAX_K)
    return engine


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure_costs(engine: Engine, max_k: int, prefix: int = 64, repeats: int = 7) -> CostModel:
    """Time one target pass over n = 1..max_k+1 tokens and one draft pass, after `prefix` tokens."""
    ids = (np.arange(prefix + max_k + 1) % 200 + 3).tolist()
    target = engine.target
    target.reset()
    target.prefill(ids[:prefix])

    def verify(n):
        target.append(ids[prefix:prefix + n])
        target.rewind(prefix)

    verify_s = [_median_time(lambda: verify(n), repeats) for n in range(1, max_k + 2)]
    target.reset()
    draft_s = None
    if engine.draft is not None:
        dec = engine.draft.decoder
        dec.reset()
        dec.prefill(ids[:prefix])

        def step():
            dec.append(ids[prefix:prefix + 1])
            dec.rewind(prefix)

        draft_s = _median_time(step, repeats * 3)
        engine.draft.reset()
    return CostModel(verify_s=verify_s, draft_s=draft_s)
