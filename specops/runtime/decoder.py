"""The ONNX Runtime decoder: one session, one KV cache, append and rewind.

This is the only module that imports onnxruntime. Two cache layouts, chosen by the graph:

- shared buffer (builder models with GroupQueryAttention, e.g. Phi-3 int4): one preallocated
  [1, kv_heads, capacity, head_dim] buffer per layer is bound as both past and present;
  GQA writes new entries at the position the attention mask implies. Rewind = shorter mask.
- concat (Optimum exports, e.g. TinyLlama): the graph concatenates past and new entries into
  `present`, which is kept as an OrtValue and fed back without a copy. A rewind leaves the
  dropped entries in place and masks them (attention_mask 0; position_ids carry the true
  positions); the cache is compacted once the holes pass `compact_after` slots.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .model_folder import ModelFolderError, ModelSpec

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
MAX_PREALLOCATED_ROWS = 32  # logits buffers kept for passes of up to this many tokens


@dataclass(frozen=True)
class SessionConfig:
    intra_op_threads: int = 2
    allow_spinning: bool = False  # spinning threads make CPU usage meaningless to an autoscaler
    cpu_arena: bool = False
    # the target's matmul kernel (builder exports on the batch decoder): "auto" = specops' tiled
    # kernel where it builds and runs, else stock onnxruntime; "tiled" = that or an error
    kernel: str = "stock"
    kernel_cache: str | None = None  # the kernel library and tiled weights (None: kernels.default_cache_dir())
    kernel_build: str = "auto"  # Settings.kernel_build: "avx512", "portable" or auto (the first this CPU runs)
    # the tiled kernel's activations: "fp32", "int8x3", "bf16", "int8", or "auto" = fp32 or int8x3 (the
    # model's own answers), timed at load (BatchDecoder._choose_precision)
    precision: str = "auto"
    consistent: str = "auto"  # Settings.consistent_passes: how wide a plain step runs (timing precisions)
    profile: str | None = None  # onnxruntime's profiler on, its JSON written under this prefix (scripts)
    keep_timings: bool = False  # Settings.cost_cache: read/write the precision timings in <kernel_cache>/timings


def make_session(spec: ModelSpec, cfg: SessionConfig, graph: bytes | None = None,
                 initializers: dict[str, np.ndarray] | None = None,
                 custom_ops: str | None = None) -> ort.InferenceSession:
    """A CPU session on the folder's model file, or on `graph` (a rewritten copy of it, see
    graph.py) whose external data is read from the model's folder; `initializers` are handed
    to the session as they are (arrays the caller keeps alive), `custom_ops` is a library of
    operators to register."""
    if graph is None and spec.layout == "builder":
        from . import graph as rewrite

        model = rewrite.load(spec.model_file)
        if rewrite.split_minimums(model, spec.folder):  # Q4_1 float zero points: a form onnxruntime runs fast
            graph = model.SerializeToString()
    so = ort.SessionOptions()
    if custom_ops:
        try:
            so.register_custom_ops_library(custom_ops)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ModelFolderError(f"onnxruntime cannot load {custom_ops} ({err})") from None
    if initializers:
        so.add_external_initializers(list(initializers),
                                     [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()])
    so.intra_op_num_threads = cfg.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = cfg.cpu_arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if cfg.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    if cfg.profile:
        so.enable_profiling, so.profile_file_prefix = True, cfg.profile
    if graph is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(spec.model_file.parent))
    try:
        return ort.InferenceSession(str(spec.model_file) if graph is None else graph, so,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelFolderError(f"{spec.model_file}: onnxruntime cannot load it ({err})") from None


def operator_session(graph: bytes, custom_ops: str, initializers: dict[str, np.ndarray],
                     threads: int = 2) -> ort.InferenceSession:
    """A session on a graph of custom operators (graph.qmatmul_model), its weights handed over as
    arrays: the kernel's self-check and tests run one operator this way."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.register_custom_ops_library(custom_ops)
    so.add_external_initializers(list(initializers), [ort.OrtValue.ortvalue_from_numpy(a)
                                                      for a in initializers.values()])
    return ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])


def bound_pass(graph: bytes, feeds: dict[str, np.ndarray], in_place: dict[str, str], custom_ops: str | None = None,
               threads: int = 2):
    """A session on `graph` with every input bound once: `feeds` by name, each input named in
    `in_place` bound as its output too (one buffer, written in place, as the decoders bind their
    caches). Returns a function that runs the pass again (benchmarks of one operator)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if custom_ops:
        so.register_custom_ops_library(custom_ops)
    session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
    io = session.io_binding()
    for name, array in feeds.items():
        if name in in_place:
            value = ort.OrtValue.ortvalue_from_numpy(array)
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output(in_place[name], value)
        else:
            io.bind_cpu_input(name, array)
    for out in session.get_outputs():
        if out.name not in in_place.values():
            io.bind_output(out.name)
    return lambda: session.run_with_iobinding(io)


class Decoder:
    """A causal LM with its KV cache. `length` tokens are cached; `append` adds more."""

    kernel, kernel_note = "stock", None  # onnxruntime's own kernels (the tiled kernel: batch_decoder.py)
    precision = kernel_path = None  # the tiled kernel's activations and path: not on onnxruntime's kernels
    attention, ragged = "onnxruntime (the model's own graph)", False

    @property
    def precision_ms(self) -> dict[str, float]:
        return {}  # nothing timed: onnxruntime's kernels

    def __init__(self, spec: ModelSpec, cfg: SessionConfig = SessionConfig(), capacity: int | None = None,
                 compact_after: int = 64, session: ort.InferenceSession | None = None):
        """`session`: share another Decoder's session (its own cache; e.g. one draft per
        sequence of a batch)."""
        self.spec = spec
        # Passes of fewer rows are padded to this many (shared-buffer layout only): where a
        # one-token pass computes differently from a multi-token one, every pass then runs the
        # same per-row arithmetic, and a one-token step gives bit for bit the logits and cache
        # entries a verify pass would (see `one_row_kernel_differs`).
        self.min_rows = 1
        self.session = session or make_session(spec, cfg)
        self.capacity = min(capacity or spec.context_length, spec.context_length)
        self._check_io()
        self.compact_after = compact_after
        self.length = 0
        self._io = self.session.io_binding()
        self._logits: dict[int, tuple[np.ndarray, ort.OrtValue]] = {}  # rows -> preallocated output
        self._bind_logits(1)  # bound first, so that it stays output 0 whatever is bound later
        self.reset()

    # -- set-up ---------------------------------------------------------------------------
    def _check_io(self) -> None:
        spec = self.spec
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        self.has_position_ids = "position_ids" in inputs
        self.past_names = [(spec.past_key % i, spec.past_value % i) for i in range(spec.num_layers)]
        self.present_names = [(spec.present_key % i, spec.present_value % i) for i in range(spec.num_layers)]
        needed = [spec.input_ids, spec.attention_mask] + [n for pair in self.past_names for n in pair]
        missing = [n for n in needed if n not in inputs]
        missing += [n for n in [spec.logits] + [n for p in self.present_names for n in p] if n not in outputs]
        if missing:
            raise ModelFolderError(f"{spec.model_file}: unsupported model, missing inputs/outputs {missing[:4]}")
        unknown = set(inputs) - set(needed) - {"position_ids"}
        if unknown:
            raise ModelFolderError(f"{spec.model_file}: unsupported model inputs {sorted(unknown)}")
        kv_type = inputs[self.past_names[0][0]].type
        if kv_type not in _DTYPES:
            raise ModelFolderError(f"{spec.model_file}: unsupported KV cache type {kv_type}")
        self.kv_dtype = _DTYPES[kv_type]
        width = next(o.shape[-1] for o in self.session.get_outputs() if o.name == spec.logits)
        self.vocab_size = width if isinstance(width, int) else spec.vocab_size  # logits width
        self.shared = spec.share_past_present and not self.has_position_ids

    def reset(self) -> None:
        """Forget the cache (keeps the buffers)."""
        spec = self.spec
        self.length = 0
        if self.shared:
            if not hasattr(self, "_kv"):  # allocate and bind once: GQA writes in place
                shape = (1, spec.kv_heads, self.capacity, spec.head_dim)
                self._kv = [tuple(ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, self.kv_dtype)) for _ in "kv")
                            for _ in range(spec.num_layers)]
                for (pk, pv), (ok, ov), (k, v) in zip(self.past_names, self.present_names, self._kv):
                    for name, value in ((pk, k), (pv, v)):
                        self._io.bind_ortvalue_input(name, value)
                    for name, value in ((ok, k), (ov, v)):
                        self._io.bind_ortvalue_output(name, value)
        else:
            empty = np.zeros((1, spec.kv_heads, 0, spec.head_dim), self.kv_dtype)
            self._kv = [tuple(ort.OrtValue.ortvalue_from_numpy(empty) for _ in "kv") for _ in range(spec.num_layers)]
            self._slot_valid = np.zeros(self.capacity + self.compact_after + 64, np.int64)  # 1 = live slot
            self._slots = 0  # physical entries in the concat cache, live or masked

    # -- forward ---------------------------------------------------------------------------
    def append(self, ids, all_logits: bool = True, copy: bool = True) -> np.ndarray:
        """Run `ids` (the next tokens) on top of the cache. Returns logits [n, vocab] (fp32),
        or [1, vocab] for the last token only when `all_logits` is False. `copy=False` returns
        the preallocated output itself: no copy, but the next append of as many tokens
        overwrites it (for callers that are done with the logits before then)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        n = ids.shape[1]
        if n == 0:
            raise ValueError("append needs at least one token")
        if self.length + n > self.capacity:
            raise OverflowError(f"context full: {self.length} + {n} > {self.capacity} tokens")
        # padding rows repeat the last token; their cache entries lie past `length` (dropped)
        pad = self.min_rows - n if self.shared and self.length + self.min_rows <= self.capacity else 0
        if pad > 0:
            ids = np.concatenate([ids, np.repeat(ids[:, -1:], pad, axis=1)], axis=1)
        rows = ids.shape[1]
        io = self._io
        io.bind_cpu_input(self.spec.input_ids, ids)
        logits_buf = self._bind_logits(rows)
        if self.shared:  # the KV buffers stay bound from reset(); only the mask grows
            io.bind_cpu_input(self.spec.attention_mask, np.ones((1, self.length + rows), np.int64))
        else:
            self._bind_concat(n)
        if self.has_position_ids:
            io.bind_cpu_input("position_ids", np.arange(self.length, self.length + n, dtype=np.int64)[None])
        self.session.run_with_iobinding(io)
        if not self.shared:
            outputs = io.get_outputs()  # [logits, present.0.key, present.0.value, ...]
            self._kv = [(outputs[1 + 2 * i], outputs[2 + 2 * i]) for i in range(self.spec.num_layers)]
            self._slots += n
        self.length += n
        if logits_buf is None:
            logits = io.get_outputs()[0].numpy()[0]
        else:
            logits = logits_buf[0, :n].copy() if copy else logits_buf[0, :n]
        return logits if all_logits else logits[-1:]

    def one_row_kernel_differs(self, tolerance: float = 1e-4) -> bool:
        return one_token_pass_differs(self, tolerance)

    def _bind_logits(self, n: int) -> np.ndarray | None:
        """Small passes (decode, verify) write logits into a preallocated buffer; long ones
        (prefill chunks) into one onnxruntime allocates."""
        if n > MAX_PREALLOCATED_ROWS:
            self._io.bind_output(self.spec.logits, "cpu")
            return None
        if n not in self._logits:
            arr = np.empty((1, n, self.vocab_size), np.float32)
            self._logits[n] = (arr, ort.OrtValue.ortvalue_from_numpy(arr))
        arr, value = self._logits[n]
        self._io.bind_ortvalue_output(self.spec.logits, value)
        return arr

    def _bind_concat(self, n: int) -> None:
        """Concat layout: feed the previous presents as past; a live mask over all slots."""
        io = self._io
        if self._slots + n > len(self._slot_valid):
            self._compact()
        self._slot_valid[self._slots:self._slots + n] = 1
        io.bind_cpu_input(self.spec.attention_mask, self._slot_valid[None, :self._slots + n].copy())
        for (pk, pv), (k, v) in zip(self.past_names, self._kv):
            io.bind_ortvalue_input(pk, k)
            io.bind_ortvalue_input(pv, v)
        for ok, ov in self.present_names:
            io.bind_output(ok, "cpu")
            io.bind_output(ov, "cpu")

    def prefill(self, ids, chunk: int = 512) -> np.ndarray:
        """Append a long prompt in chunks (bounds the attention scratch); last logits [vocab]
        (not a copy: valid until the next append)."""
        ids = np.asarray(ids, dtype=np.int64)
        logits = None
        for start in range(0, len(ids), chunk):
            logits = self.append(ids[start:start + chunk], all_logits=False, copy=False)
        return logits[-1]

    def rewind(self, length: int) -> None:
        """Drop cached tokens after the first `length`; no copy of the cache."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot rewind to {length}: cache holds {self.length}")
        if not self.shared and length < self.length:
            live = np.flatnonzero(self._slot_valid[:self._slots])
            self._slot_valid[live[length:]] = 0
            if self._slots - length > self.compact_after:
                self._compact()
        self.length = length

    def _compact(self) -> None:
        """Concat layout: squeeze masked slots out (amortised, not per step)."""
        live = np.flatnonzero(self._slot_valid[:self._slots])
        self._kv = [tuple(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(t.numpy()[:, :, live]))
                          for t in pair) for pair in self._kv]
        self._slot_valid[:] = 0
        self._slot_valid[:len(live)] = 1
        self._slots = len(live)


def one_token_pass_differs(decoder, tolerance: float = 1e-4) -> bool:
    """Whether a one-token pass gives other logits than the same token in a two-token pass.
    GroupQueryAttention takes another path for one token, whose output differs in the last
    bits (1e-6); where the next MatMulNBits quantizes its activations (accuracy level 4)
    that flips roundings and grows layer by layer (SmolLM2 int8: up to about 2 logits;
    the small int4 target: 5e-6; a TinyLlama-shaped int4 model: 0.05). Beyond
    `tolerance` of the logits' scale (random-weight models have logits in the hundreds).
    Resets the cache. `decoder`: a Decoder or anything with its interface."""
    saved, decoder.min_rows = decoder.min_rows, 1
    decoder.reset()
    decoder.prefill(np.arange(16) % 200 + 3)
    one = decoder.append([7])[0]
    decoder.rewind(16)
    two = decoder.append([7, 8])[0]
    decoder.min_rows = saved
    decoder.reset()
    return float(np.abs(one - two).max()) > tolerance * max(1.0, float(np.abs(two).max()))
