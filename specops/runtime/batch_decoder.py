"""The target for continuous batching: one session, a KV cache of `max_batch` slots.

Builder layout only (GroupQueryAttention with one buffer for past and present): each layer's
cache is one [max_batch, kv_heads, capacity, head_dim] array. A pass runs the active slots,
which are always slots 0..n-1 (a finishing sequence's slot is refilled by moving the last one's
cache into it), as one batch of n rows padded to the longest row; `query_seqlens` (graph.py)
tells attention how many tokens of each row are real, and the attention mask's row lengths
where each slot's cache ends. A slot's prompt runs alone, through a view of that slot's part
of the buffers (no copy).

Rows padded past their real tokens write cache entries beyond the slot's length, which the
next pass overwrites, as `Decoder`'s padding does; `min_rows` plays the same part
(`Decoder.one_row_kernel_differs`): every row then runs at least two tokens wide.

**Ragged passes** (`ragged`: where specops' kernel library runs, see ragged.py) replace all of
that: `run` takes any slots' rows, concatenated without padding, each tagged with its slot and
position; the attention operator addresses the cache by slot, and computes every row alike in
any company, so a plain step is one row and a prompt chunk can share a pass with other
sequences' decode rows. `forward` and `prefill` then run on `run`; padding and `min_rows` go.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import graph as rewrite
from . import ragged as ragged_graph
from . import timing_cache
from .decoder import SessionConfig, make_session, one_token_pass_differs
from .graph import KERNEL_PRECISION, LOGITS_TO_KEEP, QUERY_SEQLENS
from .kernel_paths import FAITHFUL, input_code, most_faithful_within, precision_report, precisions, served_paths
from .kernels import KernelUnavailable, build_of, default_cache_dir, library, resolve
from .model_folder import ModelFolderError, ModelSpec


# (model file, threads, consistent setting, precisions) -> ms of a plain step per precision: "auto"
# is decided once per process (BatchDecoder._choose_precision)
_TIMED: dict[tuple, dict[str, float]] = {}


class BatchDecoder:
    def __init__(self, spec: ModelSpec, cfg: SessionConfig = SessionConfig(), max_batch: int = 4,
                 capacity: int | None = None):
        if not spec.share_past_present or spec.layout != "builder":
            raise ModelFolderError(f"{spec.model_file}: batching needs a builder export with a shared KV buffer")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.spec, self.max_batch = spec, max_batch
        self.kernel, self.kernel_note = "stock", None  # which matmul kernel the passes run, and why
        self.precision: str | None = None  # the tiled kernel's activations (None on stock kernels)
        self.precision_ms: dict[str, float] = {}  # a plain step per precision, timed at load (auto)
        self.ragged, self.attention_note = False, None  # ragged passes on specops.Attention, or why not
        self.build: str | None = None  # the kernel library's build on tiled kernels: "avx512" or "portable"
        self.session = self._open(spec, cfg)
        self.capacity = min(capacity or spec.context_length, spec.context_length)
        self.min_rows = 1
        out = next(o for o in self.session.get_outputs() if o.name == spec.logits)
        self.vocab_size = out.shape[-1] if isinstance(out.shape[-1], int) else spec.vocab_size
        kv_type = next(i.type for i in self.session.get_inputs() if i.name == spec.past_key % 0)
        dtype = np.float16 if kv_type == "tensor(float16)" else np.float32
        # the attention operator keeps keys in blocks of 16 positions: its capacity is a multiple of 16
        rounded = -(-self.capacity // ragged_graph.KEY_BLOCK) * ragged_graph.KEY_BLOCK if self.ragged else self.capacity
        shape = (max_batch, spec.kv_heads, rounded, spec.head_dim)
        # written now (np.zeros would map zero pages lazily): a slot's first prompt otherwise pays
        # the page faults of its whole region, about 1 s at SmolLM2's 8192-token context
        self._kv = [(np.full(shape, 0, dtype), np.full(shape, 0, dtype)) for _ in range(spec.num_layers)]
        self._views: dict[tuple[int, int], list[tuple[ort.OrtValue, ort.OrtValue]]] = {}
        self.lengths = np.zeros(max_batch, np.int64)  # cached tokens per slot
        if self.kernel == "tiled":
            self.use_precision(self._choose_precision(cfg, precision_report(self._cache, self._which)))

    def _open(self, spec: ModelSpec, cfg: SessionConfig) -> ort.InferenceSession:
        """The session on the rewritten graph: tiled matmuls when cfg.kernel asks for them and
        they can run here, else (auto) stock onnxruntime with the reason in `kernel_note`
        (a failure of the tiled session itself included: e.g. a library that will not register)."""
        try:
            model = rewrite.load(spec.model_file)
            original = model.__class__()
            original.CopyFrom(model)  # for the ragged rewrite
            rewrite.for_batching(model, spec.logits)
        except ValueError as err:
            raise ModelFolderError(f"{spec.model_file}: {err}") from None
        cache = self._cache = Path(cfg.kernel_cache) if cfg.kernel_cache else default_cache_dir()
        self._which = cfg.kernel_build
        try:
            kernel, self.kernel_note = resolve(cfg.kernel, spec.folder, cache, cfg.kernel_build)
        except KernelUnavailable as err:  # only when "tiled" was asked for
            raise ModelFolderError(f"{spec.model_file}: the tiled kernel cannot run: {err}") from None
        if kernel == "tiled":
            try:
                return self._tiled_session(spec, cfg, original, model, cache)
            except KernelUnavailable as err:
                if cfg.kernel == "tiled":
                    raise ModelFolderError(f"{spec.model_file}: the tiled kernel cannot run: {err}") from None
                self.kernel_note = str(err)
        rewrite.split_minimums(model, spec.folder)  # Q4_1 float zero points: a form onnxruntime runs fast
        return make_session(spec, cfg, model.SerializeToString())

    def _tiled_session(self, spec: ModelSpec, cfg: SessionConfig, original, batching,
                       cache: Path) -> ort.InferenceSession:
        """The session with the tiled kernel, or KernelUnavailable saying why not. A damaged
        weight file raises ModelFolderError naming it (not a kernel problem: no fallback).
        `original`: the model as loaded, rewritten here for ragged passes where the attention
        operator computes its attention (else `batching`'s padded form, the reason in
        `attention_note`); `batching` stays as it is for the stock session."""
        tiled = original
        try:
            kv = next(i for i in original.graph.input if i.name == spec.past_key % 0)
            if kv.type.tensor_type.elem_type != 1:  # onnx.TensorProto.FLOAT
                raise ValueError("the KV cache is not fp32 (the attention operator's)")
            ragged_graph.for_ragged(tiled, spec.logits)
        except (ValueError, StopIteration) as err:
            self.attention_note = str(err) or "no past key input"
            tiled = batching.__class__()
            tiled.CopyFrom(batching)
        try:
            self._tiles = rewrite.tile_matmuls(tiled, spec.model_file, cache)  # kept: mapped
        except OSError as err:
            raise KernelUnavailable(f"cannot write the tiled weights into {cache}: {err}") from None
        if not self._tiles.arrays:
            raise KernelUnavailable("no MatMulNBits node the tiled kernel runs (4 or 8 bits, block 32, "
                                    "no zero points or float ones)")
        try:
            lib = library(cache, cfg.kernel_build)
            session = make_session(spec, cfg, tiled.SerializeToString(), self._tiles.arrays, str(lib))
        except ModelFolderError as err:  # e.g. a library onnxruntime cannot register
            raise KernelUnavailable(str(err)) from None
        self._tiles.release()
        self.kernel, self.ragged, self.build = "tiled", self.attention_note is None, build_of(Path(lib))
        return session

    @property
    def attention(self) -> str:
        """Which attention the passes run, and why not ours where it is not (for /health)."""
        if self.ragged:
            return "specops.Attention (ragged passes)" + (", portable build" if self.build == "portable" else "")
        why = self.attention_note or self.kernel_note or "the stock kernels were asked for"
        return f"onnxruntime GroupQueryAttention (padded passes: {why})"

    # -- precision of the tiled kernel --------------------------------------------------------
    def use_precision(self, name: str) -> None:
        """Run the following passes at `name` ("fp32", "int8x3", "bf16" or "int8" activations)."""
        self.precision, self._precision_feed = name, np.array([input_code(name)], np.int64)

    @property
    def kernel_path(self) -> str | None:
        """The code the precision runs on here ("int8-amx", "bf16-avx512", ...; None on stock)."""
        return served_paths(self._cache, self._which).get(self.precision) if self.precision else None

    def available_precisions(self) -> tuple[str, ...]:
        """The precisions the tiled kernel serves here, most faithful first (none on stock)."""
        return precisions(self._cache, self._which) if self.precision else ()

    def _choose_precision(self, cfg: SessionConfig, report: dict[str, str | None]) -> str:
        """cfg.precision where the kernel serves it here; "auto": of the faithful precisions
        (kernel_paths.FAITHFUL: fp32, int8x3), the most faithful whose plain decoding step is
        within 10% of the faster one's, timed here on this model
        (single-stream speed), once per process for a model file, thread count and consistent
        setting (cfg.consistent decides a step's width): every decoder of the model then computes
        alike, and a batch's rows equal a sequence's alone. `report`: kernel_paths.precision_report."""
        available = tuple(p for p, why in report.items() if why is None)
        if cfg.precision != "auto":
            if cfg.precision not in available:
                raise ModelFolderError(f"{self.spec.model_file}: kernel precision {cfg.precision} cannot run here: "
                                       f"{report[cfg.precision]}")
            return cfg.precision
        candidates = tuple(p for p in available if p in FAITHFUL)
        if not candidates:
            raise ModelFolderError(f"{self.spec.model_file}: neither fp32 nor int8x3 activations can run here: {report}")
        key = (str(self.spec.model_file.resolve()), cfg.intra_op_threads, cfg.consistent, candidates, self.ragged,
               self.build)
        if key not in _TIMED:  # then on disk if kept (runtime.timing_cache), then timed here
            disk = timing_cache.key_of("precisions", self.spec.model_file, threads=cfg.intra_op_threads,
                                       consistent=cfg.consistent, available=candidates, ragged=self.ragged,
                                       build=self.build)
            kept = timing_cache.load(self._cache / "timings", disk) if cfg.keep_timings else None
            _TIMED[key] = kept or self.time_precisions(candidates, cfg.consistent)
            if cfg.keep_timings:
                timing_cache.save(self._cache / "timings", disk, _TIMED[key])
        self.precision_ms = dict(_TIMED[key])
        return most_faithful_within(self.precision_ms)

    def time_precisions(self, names: tuple[str, ...], consistent: str = "auto", rounds: int = 7, passes: int = 3,
                        context: int = 64, warmup: int = 2) -> dict[str, float]:
        """Ms of a plain decoding step after `context` tokens, per precision: the fastest round's
        median (a shared machine only ever adds time, so the quickest round is the closest to the
        step's own cost; medians over whole runs flipped the choice between fp32 and int8 from
        one load to the next here), rounds interleaved, each precision's block after `warmup`
        untimed steps. A step is one row, or two where consistent passes are on, or auto and the
        precision's one-token pass differs from a multi-token one (bf16 and int8 activations
        amplify attention's one-token rounding; fp32 and int8x3 ones do not). Slot 0; its cache
        is emptied after."""
        slot = SlotDecoder(self, 0)
        width = {}
        for name in names:
            self.use_precision(name)
            width[name] = 2 if consistent == "on" or (consistent == "auto" and slot.one_row_kernel_differs()) else 1
        context = min(context, self.capacity - 2)
        ids = [int(t) for t in np.arange(context) % max(self.vocab_size - 1, 1) + 1]
        self.prefill(0, ids)
        times: dict[str, list[list[float]]] = {p: [] for p in names}
        saved = self.min_rows
        try:
            for _ in range(rounds):
                for name in names:
                    self.use_precision(name)
                    self.min_rows = width[name]
                    times[name].append([])
                    for i in range(warmup + passes):
                        t0 = time.perf_counter()
                        self.forward([[ids[-1]]], start=0, last_only=True)
                        if i >= warmup:
                            times[name][-1].append((time.perf_counter() - t0) * 1e3)
                        self.rewind(0, context)
        finally:
            self.min_rows, self.lengths[0] = saved, 0
        return {p: float(min(np.median(r) for r in t)) for p, t in times.items()}

    # -- cache ------------------------------------------------------------------------------
    def rewind(self, slot: int, length: int) -> None:
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"cannot rewind slot {slot} to {length}: it holds {self.lengths[slot]}")
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src`'s cache into slot `dst` (its live part only); `src` becomes empty."""
        live = int(self.lengths[src])
        n = min(-(-live // ragged_graph.KEY_BLOCK) * ragged_graph.KEY_BLOCK, self._kv[0][0].shape[2])  # whole key blocks
        for k, v in self._kv:
            k[dst, :, :n] = k[src, :, :n]
            v[dst, :, :n] = v[src, :, :n]
        self.lengths[dst], self.lengths[src] = live, 0

    def _range(self, start: int, stop: int) -> list[tuple[ort.OrtValue, ort.OrtValue]]:
        """OrtValues over slots start..stop-1 of every layer's buffers (views, no copy)."""
        if (start, stop) not in self._views:
            self._views[start, stop] = [(ort.OrtValue.ortvalue_from_numpy(k[start:stop]),
                                         ort.OrtValue.ortvalue_from_numpy(v[start:stop])) for k, v in self._kv]
        return self._views[start, stop]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, rows: list[list[int]], start: int = 0, last_only: bool = False) -> list[np.ndarray]:
        """Run rows[i] (the next tokens of slot start + i) in one pass; returns each row's
        logits [len(rows[i]), vocab], or [1, vocab] for its last token with `last_only` (the LM
        head then runs on those positions only); views of one output, valid until the next pass."""
        n = len(rows)
        if n == 0 or start + n > self.max_batch or any(len(r) == 0 for r in rows):
            raise ValueError("forward needs 1..max_batch non-empty rows")
        if self.ragged:
            return self.run(range(start, start + n), rows, [1 if last_only else len(r) for r in rows])
        slots = np.arange(start, start + n)
        real = np.array([len(r) for r in rows])
        lengths = self.lengths[slots]
        if (lengths + real > self.capacity).any():
            raise OverflowError(f"context full: a row needs more than the {self.capacity}-token cache")
        # padding stays inside the cache; a row at the very end runs with its real tokens only
        width = np.where(lengths + self.min_rows <= self.capacity, np.maximum(real, self.min_rows), real)
        seq = int(width.max())
        ids = np.empty((n, seq), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            ids[i, len(r):] = r[-1]
        ends = lengths + width
        mask = (np.arange(int(ends.max()))[None, :] < ends[:, None]).astype(np.int64)
        io = self.session.io_binding()
        io.bind_output(self.spec.logits, "cpu")
        io.bind_cpu_input(self.spec.input_ids, ids)
        io.bind_cpu_input(self.spec.attention_mask, mask)
        io.bind_cpu_input(QUERY_SEQLENS, width.astype(np.int32))
        # positions kept for the LM head: from the earliest last-real-token on (last_only), or all
        keep = seq - int(real.min()) + 1 if last_only else seq
        io.bind_cpu_input(LOGITS_TO_KEEP, np.array([keep], np.int64))
        if self.precision is not None:
            io.bind_cpu_input(KERNEL_PRECISION, self._precision_feed)
        for i, (k, v) in enumerate(self._range(start, start + n)):
            io.bind_ortvalue_input(self.spec.past_key % i, k)
            io.bind_ortvalue_input(self.spec.past_value % i, v)
            io.bind_ortvalue_output(self.spec.present_key % i, k)
            io.bind_ortvalue_output(self.spec.present_value % i, v)
        self.session.run_with_iobinding(io)
        logits = io.get_outputs()[0].numpy()
        self.lengths[slots] += real
        if last_only:  # row i's last real token sits at kept position real[i] - 1 - (seq - keep)
            return [logits[i, real[i] - 1 - (seq - keep)][None] for i in range(n)]
        return [logits[i, :real[i]] for i in range(n)]

    def run(self, slots, rows: list[list[int]], keep: list[int]) -> list[np.ndarray]:
        """One ragged pass (`ragged` decoders only): rows[i] appended to slot slots[i] (each slot
        at most once), concatenated without padding; returns for each row the logits of its last
        keep[i] tokens [keep[i], vocab] (0 for a prompt chunk whose logits nobody reads: the LM
        head skips it), views of one output valid until the next pass."""
        slots = np.asarray(list(slots), np.int64)
        n = np.array([len(r) for r in rows], np.int64)
        keep = np.asarray(keep, np.int64)
        if (len(slots) == 0 or len(slots) != len(rows) or len(np.unique(slots)) != len(slots) or (n == 0).any()
                or (slots < 0).any() or (slots >= self.max_batch).any() or (keep < 0).any() or (keep > n).any()):
            raise ValueError("a ragged pass needs non-empty rows on distinct slots, 0 <= keep <= a row's tokens")
        lengths = self.lengths[slots]
        if (lengths + n > self.capacity).any():
            raise OverflowError(f"context full: a row needs more than the {self.capacity}-token cache")
        ends = np.cumsum(n)
        ids = np.fromiter((t for r in rows for t in r), np.int64, int(ends[-1]))[None]
        positions = np.concatenate([np.arange(a, a + m) for a, m in zip(lengths, n)]).astype(np.int32)
        kept = np.concatenate([np.arange(e - k, e) for e, k in zip(ends, keep)]).astype(np.int64)
        io = self.session.io_binding()
        io.bind_output(self.spec.logits, "cpu")
        io.bind_cpu_input(self.spec.input_ids, ids)
        io.bind_cpu_input(ragged_graph.ROW_SLOT, np.repeat(slots, n).astype(np.int32))
        io.bind_cpu_input(ragged_graph.ROW_POS, positions)
        io.bind_cpu_input(ragged_graph.LOGITS_ROWS, kept)
        io.bind_cpu_input(KERNEL_PRECISION, self._precision_feed)
        for i, (k, v) in enumerate(self._range(0, self.max_batch)):
            io.bind_ortvalue_input(self.spec.past_key % i, k)
            io.bind_ortvalue_input(self.spec.past_value % i, v)
            io.bind_ortvalue_output(self.spec.present_key % i, k)
            io.bind_ortvalue_output(self.spec.present_value % i, v)
        self.session.run_with_iobinding(io)
        logits = io.get_outputs()[0].numpy()[0]
        self.lengths[slots] += n
        offsets = np.cumsum(keep) - keep
        return [logits[o:o + k] for o, k in zip(offsets, keep)]

    def prefill(self, slot: int, ids, chunk: int = 512) -> np.ndarray:
        """Append a prompt to one slot, alone, in chunks; its last logits [vocab]."""
        ids = [int(t) for t in ids]
        logits = None
        for begin in range(0, len(ids), chunk):
            part = ids[begin:begin + chunk]
            if self.ragged:
                logits = self.run([slot], [part], [1 if begin + chunk >= len(ids) else 0])[0]
            else:
                logits = self.forward([part], start=slot, last_only=True)[0]
        return logits[-1]


class SlotDecoder:
    """One slot of a BatchDecoder behind `Decoder`'s interface, so that everything written for
    one sequence (the engine, cost calibration) runs on the batch's session and cache."""

    def __init__(self, batch: BatchDecoder, slot: int = 0):
        self.batch, self.slot = batch, slot
        self.spec, self.capacity, self.vocab_size = batch.spec, batch.capacity, batch.vocab_size

    @property
    def length(self) -> int:
        return int(self.batch.lengths[self.slot])

    @property
    def kernel(self) -> str:
        return self.batch.kernel

    @property
    def kernel_note(self) -> str | None:
        return self.batch.kernel_note

    @property
    def precision(self) -> str | None:
        return self.batch.precision

    @property
    def kernel_path(self) -> str | None:
        return self.batch.kernel_path

    @property
    def attention(self) -> str:
        return self.batch.attention

    @property
    def ragged(self) -> bool:
        return self.batch.ragged

    @property
    def precision_ms(self) -> dict[str, float]:
        return self.batch.precision_ms

    def use_precision(self, name: str) -> None:
        self.batch.use_precision(name)

    def available_precisions(self) -> tuple[str, ...]:
        return self.batch.available_precisions()

    @property
    def min_rows(self) -> int:
        return self.batch.min_rows

    @min_rows.setter
    def min_rows(self, value: int) -> None:
        self.batch.min_rows = value

    def reset(self) -> None:
        self.batch.lengths[self.slot] = 0

    def append(self, ids, all_logits: bool = True, copy: bool = True) -> np.ndarray:
        logits = self.batch.forward([[int(t) for t in np.asarray(ids).reshape(-1)]], start=self.slot,
                                    last_only=not all_logits)[0]
        return logits.copy() if copy else logits

    def prefill(self, ids, chunk: int = 512) -> np.ndarray:
        return self.batch.prefill(self.slot, ids, chunk)

    def rewind(self, length: int) -> None:
        self.batch.rewind(self.slot, length)

    def one_row_kernel_differs(self, tolerance: float = 1e-4) -> bool:
        """False on ragged passes: every row is computed alike in any pass (the attention operator)."""
        return not self.batch.ragged and one_token_pass_differs(self, tolerance)
