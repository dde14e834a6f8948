"""Settings -> a ready Engine: read folders, open sessions, bridge vocabularies, calibrate."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cost_cache
from .config import Settings
from .engine.adaptive import CostModel
from .engine.batch import BatchEngine
from .engine.llm_engine import Engine
from .prepare import CATALOG, resolve_prepared
from .runtime import kernels
from .runtime.batch_decoder import BatchDecoder, SlotDecoder
from .runtime.decoder import Decoder, SessionConfig
from .runtime.model_folder import ModelFolderError, ModelSpec, read_model_folder
from .runtime.tokenizer import TextTokenizer
from .speculators.draft import DraftModelSpeculator
from .speculators.ngram import NgramSpeculator
from .speculators.vocab_bridge import VocabBridge

MAX_K = 16
log = logging.getLogger("specops.loader")


class LoadStopped(Exception):
    """The load was asked to stop (the server is shutting down) and gave up between two passes."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise LoadStopped


@dataclass
class ModelPaths:
    target: Path
    target_tokenizer: Path
    draft: Path | None
    draft_tokenizer: Path | None


def local_folder(source: str, settings: Settings) -> Path:
    """A prepared model's name -> its folder; anything else is taken as a path."""
    return resolve_prepared(source, settings.model_cache_dir) if source in CATALOG else Path(source)


def local_paths(settings: Settings) -> ModelPaths:
    """Settings naming local folders -> paths (hub ids are resolved by the service's sync)."""
    target = local_folder(settings.target_model, settings)
    draft = None if settings.draft_model.lower() in ("", "none") else local_folder(settings.draft_model, settings)
    return ModelPaths(target, Path(settings.target_tokenizer or target),
                      draft, Path(settings.draft_tokenizer or draft) if draft else None)


def _draft_spec(settings: Settings, paths: ModelPaths, tokenizer: TextTokenizer,
                target_spec: ModelSpec) -> tuple[ModelSpec, VocabBridge] | None:
    if paths.draft is None:
        return None
    draft_spec = read_model_folder(paths.draft, settings.verify_checksums)
    bridge = VocabBridge(tokenizer, TextTokenizer(paths.draft_tokenizer), target_spec.vocab_size,
                         draft_spec.vocab_size)
    return draft_spec, bridge


def kernel_cache(settings: Settings) -> Path:
    return Path(settings.kernel_cache_dir or Path(settings.model_cache_dir) / "kernels")


def resolve_kernel(setting: str, spec: ModelSpec, cache: Path | None = None,
                   which: str = "auto") -> tuple[str, str | None]:
    """The matmul kernel the target will run on, "tiled" or "stock", and why not tiled (None when
    it is, or when stock was asked for). Raises ModelFolderError when "tiled" was asked for and
    cannot run. Only builder exports with a shared KV buffer (the batch decoder's graph) tile.
    `which`: Settings.kernel_build."""
    if setting != "stock" and not (spec.layout == "builder" and spec.share_past_present):
        why = f"{spec.model_file} is not a builder export with a shared KV buffer"
        if setting == "tiled":
            raise ModelFolderError(f"the tiled kernel cannot run: {why}")
        return "stock", why
    try:
        return kernels.resolve(setting, spec.folder, cache, which)
    except kernels.KernelUnavailable as err:
        raise ModelFolderError(f"the tiled kernel cannot run: {err}") from None


def target_config(settings: Settings) -> SessionConfig:
    return SessionConfig(settings.intra_op_threads, settings.allow_spinning, kernel=settings.kernel,
                         kernel_cache=str(kernel_cache(settings)), kernel_build=settings.kernel_build,
                         precision=settings.kernel_precision,
                         consistent=settings.consistent_passes, keep_timings=settings.cost_cache)


def _consistent(settings: Settings, target) -> bool:
    """Run one-token passes two rows wide? (see Decoder.one_row_kernel_differs). Never on ragged
    passes: a one-row pass computes its row as any wider pass does."""
    if target.ragged:
        return False
    return settings.consistent_passes == "on" or (settings.consistent_passes == "auto"
                                                  and target.one_row_kernel_differs())


def _single_target(spec: ModelSpec, cfg: SessionConfig, capacity: int | None) -> Decoder | SlotDecoder:
    """One sequence's target: a builder export runs on the batch decoder's graph (one slot), whose
    LM head skips the prompt positions whose logits nobody reads; other layouts on `Decoder`."""
    if spec.layout == "builder" and spec.share_past_present:
        return SlotDecoder(BatchDecoder(spec, cfg, 1, capacity))
    return Decoder(spec, cfg, capacity)


def engine_target(settings: Settings, spec: ModelSpec) -> Decoder | SlotDecoder:
    """The target decoder one sequence's engine runs on (graph, kernel, cap as load_engine makes it)."""
    return _single_target(spec, target_config(settings), settings.context_length or None)


def load_engine(settings: Settings, paths: ModelPaths | None = None, calibrate: bool = True,
                stop: threading.Event | None = None) -> Engine:
    """`stop`: set by another thread to abandon the load at its next timing pass (LoadStopped)."""
    paths = paths or local_paths(settings)
    cap = settings.context_length or None
    target_spec = read_model_folder(paths.target, settings.verify_checksums)
    target = _single_target(target_spec, target_config(settings), cap)
    if _consistent(settings, target):
        target.min_rows = 2
    tokenizer = TextTokenizer(paths.target_tokenizer)
    draft = None
    if (found := _draft_spec(settings, paths, tokenizer, target_spec)) is not None:
        draft_spec, bridge = found
        draft_decoder = Decoder(draft_spec, SessionConfig(settings.draft_intra_op_threads, settings.allow_spinning),
                                target.capacity)
        draft = DraftModelSpeculator(draft_decoder, bridge)
    engine = Engine(target, tokenizer, draft, NgramSpeculator(settings.ngram_min, settings.ngram_max),
                    prefill_chunk=settings.prefill_chunk)
    if calibrate:
        engine.cost = calibrated_costs(settings, target, draft.decoder if draft is not None else None, stop)
    return engine


def load_batch_engine(settings: Settings, paths: ModelPaths | None = None, calibrate: bool = True,
                      stop: threading.Event | None = None) -> BatchEngine:
    """The continuous-batching engine: `settings.max_batch` slots of the target's cache; each
    sequence that uses the draft gets its own draft cache on one shared draft session. `stop` as
    in `load_engine`."""
    paths = paths or local_paths(settings)
    target_spec = read_model_folder(paths.target, settings.verify_checksums)
    batch = BatchDecoder(target_spec, target_config(settings),
                         settings.max_batch, settings.context_length or None)
    if _consistent(settings, SlotDecoder(batch, 0)):
        batch.min_rows = 2
    tokenizer = TextTokenizer(paths.target_tokenizer)
    make_draft, first = None, None
    if (found := _draft_spec(settings, paths, tokenizer, target_spec)) is not None:
        draft_spec, bridge = found
        first = Decoder(draft_spec, SessionConfig(settings.draft_intra_op_threads, settings.allow_spinning),
                        batch.capacity)
        spare = [first]

        def make_draft() -> DraftModelSpeculator:
            decoder = spare.pop() if spare else Decoder(draft_spec, capacity=batch.capacity, session=first.session)
            return DraftModelSpeculator(decoder, bridge)
    cost = (calibrated_costs(settings, SlotDecoder(batch, 0), first, stop) if calibrate
            else CostModel(verify_s=[1.0], draft_s=0.0 if first is not None else None))
    engine = BatchEngine(batch, tokenizer, cost, make_draft, (settings.ngram_min, settings.ngram_max),
                         settings.prefill_chunk)
    engine.budget.stall = settings.prefill_stall
    engine.budget.floor = min(settings.prefill_min_chunk, settings.prefill_chunk)
    return engine


def timed_pass(decoder: Decoder, ids, stop: threading.Event | None = None) -> float:
    """Seconds of one pass over `ids` on top of the cache, which is then rewound; LoadStopped
    instead once `stop` is set."""
    _check(stop)
    length = decoder.length
    t = time.perf_counter()
    decoder.append(ids, copy=False)
    seconds = time.perf_counter() - t
    decoder.rewind(length)
    return seconds


def calibrated_costs(settings: Settings, target, draft: Decoder | None,
                     stop: threading.Event | None = None) -> CostModel:
    """`measure_costs`, or the curve cached for this model file, CPU and settings, checked by a
    few passes and scaled to them (specops.cost_cache); a fresh sweep is cached for next time.
    Raises LoadStopped between two passes once `stop` is set."""
    if not settings.cost_cache:
        return measure_costs(target, draft, MAX_K, stop=stop)
    folder = kernel_cache(settings) / "costs"
    key = cost_cache.cost_key(
        target.spec.model_file, draft.spec.model_file if draft is not None else None, max_k=MAX_K,
        kind=type(target).__name__, kernel=target.kernel, precision=target.precision, path=target.kernel_path,
        min_rows=target.min_rows, threads=settings.intra_op_threads, draft_threads=settings.draft_intra_op_threads,
        spinning=settings.allow_spinning)
    cached = cost_cache.load(folder, key)
    if cached is not None:
        t = time.perf_counter()
        factor = cost_cache.drift(cached, probe_costs(target, (1, MAX_K + 1), stop=stop))
        if cost_cache.usable(factor):
            log.info("pass costs: cached curve %s x %.2f (checked in %.1f s)", key, factor, time.perf_counter() - t)
            return cost_cache.rescaled(cached, factor)
        log.info("pass costs: cached curve %s off by x %.2f: timing again", key, factor)
    t = time.perf_counter()
    cost = measure_costs(target, draft, MAX_K, stop=stop)
    saved = cost_cache.save(folder, key, cost)
    log.info("pass costs: timed in %.1f s%s", time.perf_counter() - t,
             f", cached as {key}" if saved else f" ({folder} cannot be written: not cached)")
    return cost


def probe_costs(target, lengths: tuple[int, ...], prefix: int = 64, block: int = 5,
                stop: threading.Event | None = None) -> dict[int, float]:
    """Median seconds of a target pass over each of `lengths` tokens after `prefix` (the first two
    passes of each block only warm up): a few passes to check a cached curve against."""
    ids = (np.arange(prefix + max(lengths)) % 200 + 3).tolist()
    target.reset()
    target.prefill(ids[:prefix])
    out = {n: float(np.median([timed_pass(target, ids[prefix:prefix + n], stop) for _ in range(block)][2:]))
           for n in sorted(lengths, reverse=True)}
    target.reset()
    return out


def timed_lengths(max_k: int) -> list[int]:
    """The pass lengths the sweep times: 1, and enough points from 2 to max_k + 1 for the line
    `_smooth` fits through them (1, 2, 3, 5, 9, 17 for max_k 16: 6 lengths instead of 17)."""
    ns, n = {1, 2, 3, max_k + 1}, 5
    while n < max_k + 1:
        ns.add(n)
        n = 2 * n - 1
    return sorted((n for n in ns if n <= max_k + 1), reverse=True)  # longest first


def measure_costs(target, draft: Decoder | None, max_k: int, prefix: int = 64, repeats: int = 3,
                  block: int = 6, stop: threading.Event | None = None) -> CostModel:
    """Time target passes over n tokens after `prefix` tokens (n from `timed_lengths`; the table
    for every n = 1..max_k+1 comes from the line through them), alone and right after two draft
    passes (as in a draft round), and one draft pass. `target`: a Decoder or a slot of the batch
    decoder.

    A pass costs more right after a longer one (a 1-token pass 20% more after a 17-token pass,
    and for several passes), so each length is timed in a block of `block` passes, the first two
    of which only warm up, from the longest length down to one token; the sweep is repeated
    `repeats` times so that drift of a shared machine spreads over all lengths. Medians."""
    ids = (np.arange(prefix + max_k + 2) % 200 + 3).tolist()
    target.reset()
    target.prefill(ids[:prefix])
    if draft is not None:
        draft.reset()
        draft.prefill(ids[:prefix])

    def verify(n: int) -> float:
        return timed_pass(target, ids[prefix:prefix + n], stop)

    def draft_pass() -> float:
        return timed_pass(draft, ids[prefix:prefix + 1], stop)

    ns = timed_lengths(max_k)
    plain, after, drafts = {n: [] for n in ns}, {n: [] for n in ns}, []
    for _ in range(repeats):
        for n in ns:
            plain[n] += [verify(n) for _ in range(block)][2:]
            if draft is not None:
                for i in range(block):
                    d = [draft_pass(), draft_pass()]
                    seconds = verify(n)
                    if i >= 2:
                        drafts += d
                        after[n].append(seconds)
    target.reset()
    verify_s = _smooth({n: float(np.median(t)) for n, t in plain.items()}, max_k + 1)
    if draft is None:
        return CostModel(verify_s=verify_s, draft_s=None)
    draft.reset()
    return CostModel(verify_s=verify_s, draft_s=float(np.median(drafts)),
                     verify_after_draft_s=_smooth({n: float(np.median(t)) for n, t in after.items()}, max_k + 1))


def _smooth(medians: dict[int, float], longest: int | None = None) -> list[float]:
    """Per-length medians -> the table the cost model uses: one token as timed, two and more on
    the least-squares line through their medians. Beyond one token a pass grows linearly with
    its length (the int4 kernels' work per row; measured on the embedded target: 2.83, 4.75 and
    12.6 ms for 2, 5 and 17 tokens, 0.65 ms a token), and one noisy median of a shared machine
    would otherwise skew which k the model picks. `longest`: the table runs to that length (the
    lengths between timed ones read off the line); default the longest timed."""
    ns = sorted(medians)
    if len(ns) < 3:
        return [medians[n] for n in ns]
    slope, at2 = np.polyfit([n - 2 for n in ns[1:]], [medians[n] for n in ns[1:]], 1)
    slope = max(float(slope), 0.0)
    return [medians[1]] + [max(float(at2) + slope * (n - 2), medians[1]) for n in range(2, (longest or ns[-1]) + 1)]
