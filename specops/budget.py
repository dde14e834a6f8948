"""The memory plan: will the target, the draft and their caches fit in the pod's memory limit?

Resident bytes, in steady state (DESIGN.md section 3):

    weights (target + draft)                     mapped external data, or the heap copy
                                                 MatMulNBits / MatMul repack into at load
    + KV cache   = cap * layers * 2 * kv_heads * head_dim * 4 B   per model (x2 for a concat
                                                 cache: past and present coexist during a pass),
                   x max_batch: every batched sequence has its own slot (and draft cache)
    + prefill scratch = max over models of one chunk's attention scores
                        (heads * chunk * cap * 4 B) and activations (chunk * (vocab + ...) * 4 B)
    + runtime overhead (Python, onnxruntime, tokenizers, server; a setting)

and at load, before any cache is touched, a model that is not prepacked holds its mapped
originals *and* the heap copy: 2x its weights (Phi-3 int4: 5.4 GB for 2.7 GB of weights).
The plan must fit both. Figures are estimates with known inputs, shown in /health and the log;
the largest context cap that fits is searched for, since KV and scratch grow with it. With
continuous batching the batch is lowered first (largest that fits at the requested cap), and the
cap only when one sequence does not fit.

Pure functions on `ModelFigures`, plus small readers: the cgroup limit (specops.cgroup), and a model folder's
file sizes and config (`figures_from_spec`). No onnxruntime here (decoder.py owns it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from .cgroup import read_memory_limit
from .runtime.ragged import KEY_BLOCK

MiB = 1 << 20
PREPACKED_MARKER = "prepacked.json"  # written by scripts/prepack_target.py
CAP_STEP = 128  # caps are rounded down to a multiple of this (whole KV pages, readable numbers)
FP32 = 4


class BudgetError(ValueError):
    """The models cannot fit the memory limit; the message holds the plan's numbers."""


@dataclass(frozen=True)
class ModelFigures:
    """What the budget needs to know about one model (from a folder, or typed in for a plan)."""
    name: str
    num_layers: int
    kv_heads: int
    head_dim: int
    context_length: int
    vocab_size: int
    num_heads: int  # query heads: the attention-score scratch is [heads, chunk, cap]
    hidden_size: int
    intermediate_size: int
    weight_bytes: int  # resident after load: mapped (prepacked/external) or the heap repack
    load_extra_bytes: int = 0  # also resident while loading: originals mapped beside the heap copy
    kv_dtype_bytes: int = FP32  # CPU KV caches are fp32 for both production models
    kv_copies: int = 1  # 2 for a concat cache (Optimum export): past and present alive in a pass
    attn_copies: int = 1  # score buffers per pass: 1 fused GroupQueryAttention, 2 MatMul + Softmax


def kv_bytes_per_token(m: ModelFigures) -> int:
    """One cached token: K and V for every layer (Phi-3: 32*2*32*96*4 = 768 KiB)."""
    return m.num_layers * 2 * m.kv_heads * m.head_dim * m.kv_dtype_bytes


def kv_cache_bytes(m: ModelFigures, cap: int) -> int:
    """The cache at the cap (a model never holds more than its own context), rounded up to whole
    key blocks as the attention operator allocates it, copies included."""
    return -(-min(cap, m.context_length) // KEY_BLOCK) * KEY_BLOCK * kv_bytes_per_token(m) * m.kv_copies


def prefill_scratch_bytes(m: ModelFigures, chunk: int, cap: int) -> int:
    """One prefill chunk's transient buffers at a full cache: the attention scores
    [heads, chunk, cap] fp32, plus logits [chunk, vocab] and the MLP/attention activations."""
    cap = min(cap, m.context_length)
    chunk = min(chunk, cap)
    scores = m.attn_copies * m.num_heads * chunk * cap * FP32
    activations = chunk * (m.vocab_size + 4 * m.hidden_size + 2 * m.intermediate_size) * FP32
    return scores + activations


@dataclass(frozen=True)
class MemoryPlan:
    """The numbers for one context cap. `need_bytes` = max(steady state, load peak)."""
    limit_bytes: int | None  # None: no limit found (nothing to enforce)
    context_cap: int
    requested_context: int
    prefill_chunk: int
    items: dict[str, int]  # steady-state resident bytes by item
    load_peak_bytes: int
    lowered: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    max_batch: int = 1  # sequences whose caches the plan holds
    requested_batch: int = 1

    @property
    def steady_bytes(self) -> int:
        return sum(self.items.values())

    @property
    def need_bytes(self) -> int:
        return max(self.steady_bytes, self.load_peak_bytes)

    @property
    def fits(self) -> bool:
        return self.limit_bytes is None or self.need_bytes <= self.limit_bytes

    def to_dict(self) -> dict:
        """JSON-ready, in MiB (one decimal), for /health."""
        mib = lambda b: None if b is None else round(b / MiB, 1)  # noqa: E731
        return {"fits": self.fits, "limit_mib": mib(self.limit_bytes), "need_mib": mib(self.need_bytes),
                "steady_mib": mib(self.steady_bytes), "load_peak_mib": mib(self.load_peak_bytes),
                "context_cap": self.context_cap, "requested_context": self.requested_context,
                "lowered": self.lowered, "prefill_chunk": self.prefill_chunk,
                "max_batch": self.max_batch, "requested_batch": self.requested_batch,
                "items_mib": {k: mib(v) for k, v in self.items.items()}, "notes": list(self.notes)}

    def summary(self) -> str:
        """One log line."""
        limit = "no limit" if self.limit_bytes is None else f"{self.limit_bytes / MiB:.0f} MiB"
        lowered = f" (lowered from {self.requested_context})" if self.lowered else ""
        batch = (f"batch {self.max_batch}" + (f" (lowered from {self.requested_batch})"
                                               if self.max_batch < self.requested_batch else "") + "; ")
        return (f"memory plan: need {self.need_bytes / MiB:.0f} MiB of {limit} (steady "
                f"{self.steady_bytes / MiB:.0f}, load peak {self.load_peak_bytes / MiB:.0f}); "
                f"context cap {self.context_cap}{lowered}; {batch}" + ", ".join(
                    f"{k} {v / MiB:.0f}" for k, v in self.items.items()))

    def __str__(self) -> str:
        rows = [(k, v) for k, v in self.items.items()]
        rows += [("= steady state", self.steady_bytes), ("load peak", self.load_peak_bytes)]
        if self.limit_bytes is not None:
            rows.append(("limit", self.limit_bytes))
        lines = [f"  {k:<28} {v / MiB:9.1f} MiB" for k, v in rows]
        head = f"memory plan at context cap {self.context_cap} (prefill chunk {self.prefill_chunk}):"
        return "\n".join([head, *lines, *(f"  note: {n}" for n in self.notes)])


def plan_memory(target: ModelFigures, draft: ModelFigures | None, *, limit_bytes: int | None,
                context_cap: int, prefill_chunk: int, overhead_bytes: int,
                requested_context: int | None = None, notes: tuple[str, ...] = (), batch: int = 1,
                requested_batch: int | None = None, reserves: tuple[tuple[str, int], ...] = ()) -> MemoryPlan:
    """The plan for one context cap and batch (no verdict logic: see `fits`, `choose_plan`).
    `reserves`: named bytes the limit must also leave free (page cache in use, reclaim margin)."""
    models = [m for m in (target, draft) if m is not None]
    items = {f"{m.name} weights": m.weight_bytes for m in models}
    times = f" x {batch}" if batch > 1 else ""
    items |= {f"{m.name} KV cache{times}": kv_cache_bytes(m, context_cap) * batch for m in models}
    items["prefill scratch"] = max(prefill_scratch_bytes(m, prefill_chunk, context_cap) for m in models)
    items["runtime overhead"] = overhead_bytes
    items |= dict(reserves)
    # Loading goes target, then draft; caches are allocated lazily (calloc), so untouched then.
    resident = overhead_bytes + sum(b for _, b in reserves)
    peak = 0
    for m in models:
        peak = max(peak, resident + m.weight_bytes + m.load_extra_bytes)
        resident += m.weight_bytes
    return MemoryPlan(limit_bytes, context_cap, requested_context or context_cap, prefill_chunk, items, peak,
                      notes=notes, max_batch=batch, requested_batch=requested_batch or batch)


def largest_context_cap(target: ModelFigures, draft: ModelFigures | None, *, limit_bytes: int,
                        prefill_chunk: int, overhead_bytes: int, step: int = CAP_STEP,
                        reserves: tuple[tuple[str, int], ...] = ()) -> int:
    """The largest multiple of `step` (<= the target's context) whose plan fits; 0 if none does.
    The need grows monotonically with the cap (KV, scratch), so a bisection over multiples finds it."""
    def fits(cap: int) -> bool:
        return plan_memory(target, draft, limit_bytes=limit_bytes, context_cap=cap, prefill_chunk=prefill_chunk,
                           overhead_bytes=overhead_bytes, reserves=reserves).fits

    lo, hi = 0, target.context_length // step  # invariant: lo * step fits (or lo == 0), hi + 1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid - 1)
    return lo * step


def choose_plan(target: ModelFigures, draft: ModelFigures | None, *, limit_bytes: int | None,
                requested_context: int, prefill_chunk: int, overhead_bytes: int, auto_cap: bool = True,
                min_context: int = 256, notes: tuple[str, ...] = (), batch: int = 1,
                reserves: tuple[tuple[str, int], ...] = ()) -> MemoryPlan:
    """The plan at the requested cap and batch if it fits; else at the largest batch that fits
    at that cap (with a note saying why); else, one sequence, when `auto_cap`, at the largest
    cap that fits (>= `min_context`); else BudgetError with the numbers and what would help."""
    args = dict(prefill_chunk=prefill_chunk, overhead_bytes=overhead_bytes, notes=notes, reserves=reserves)
    plan = plan_memory(target, draft, limit_bytes=limit_bytes, context_cap=requested_context,
                       requested_context=requested_context, batch=batch, **args)
    if plan.fits:
        return plan
    for smaller in range(batch - 1, 0, -1):
        lowered = plan_memory(target, draft, limit_bytes=limit_bytes, context_cap=requested_context,
                              requested_context=requested_context, batch=smaller, requested_batch=batch, **args)
        if lowered.fits:
            why = (f"max_batch lowered from {batch} to {smaller}: {batch} sequences' caches at context cap "
                   f"{requested_context} need {plan.need_bytes / MiB:.0f} MiB, over the {limit_bytes / MiB:.0f} MiB "
                   "limit (lower SPECOPS_CONTEXT_LENGTH to batch more)")
            return replace(lowered, notes=lowered.notes + (why,))
    if batch > 1:  # not even one sequence at this cap: plan for one, lowering the cap
        notes = notes + (f"max_batch lowered from {batch} to 1: no batch fits at context cap {requested_context}",)
        return replace(choose_plan(target, draft, limit_bytes=limit_bytes, requested_context=requested_context,
                                   prefill_chunk=prefill_chunk, overhead_bytes=overhead_bytes, auto_cap=auto_cap,
                                   min_context=min_context, notes=notes, reserves=reserves), requested_batch=batch)
    cap = largest_context_cap(target, draft, limit_bytes=limit_bytes, prefill_chunk=prefill_chunk,
                              overhead_bytes=overhead_bytes, reserves=reserves) if auto_cap else 0
    if auto_cap and cap >= min_context:
        lowered = plan_memory(target, draft, limit_bytes=limit_bytes, context_cap=cap,
                              requested_context=requested_context, **args)
        return replace(lowered, lowered=True)
    raise BudgetError(_refusal(plan, cap if auto_cap else None, min_context, target, draft))


def _refusal(plan: MemoryPlan, best_cap: int | None, min_context: int, target: ModelFigures,
             draft: ModelFigures | None) -> str:
    """Why the plan cannot fit, its numbers, and what would make it fit."""
    why = [f"the models do not fit the memory limit: need {plan.need_bytes / MiB:.0f} MiB at context cap "
           f"{plan.context_cap}, limit {plan.limit_bytes / MiB:.0f} MiB"]
    if best_cap is None:
        why.append("lowering the context cap is switched off (SPECOPS_MEMORY_AUTO_CONTEXT_CAP=false)")
    elif best_cap == 0:
        fixed = sum(v for k, v in plan.items.items() if "KV" not in k and "scratch" not in k)
        why.append("no context cap fits" + (f": weights and overhead alone take {fixed / MiB:.0f} MiB"
                                            if fixed > plan.limit_bytes else ""))
    else:
        why.append(f"the largest cap that fits is {best_cap} tokens, below the minimum of {min_context} "
                   "(SPECOPS_MEMORY_MIN_CONTEXT)")
    kept = {k: v for k, v in plan.items.items() if k in ("page cache in use", "reclaim margin")}
    if kept:
        why.append("the plan keeps " + " and ".join(f"{v / MiB:.0f} MiB for {k}" for k, v in kept.items())
                   + " free: without them mapped weights are reclaimed and read back every pass (thrash)")
    if plan.load_peak_bytes > plan.limit_bytes:
        heavy = ", ".join(m.name for m in (target, draft) if m is not None and m.load_extra_bytes)
        why.append(f"loading alone peaks at {plan.load_peak_bytes / MiB:.0f} MiB"
                   + (f": prepack the {heavy} (scripts/prepack_target.py) so its repacked weights are mapped, "
                      "not copied to the heap" if heavy else ""))
    if draft is not None:
        why.append(f"the draft's weights take {draft.weight_bytes / MiB:.0f} MiB (an int4 draft from "
                   "scripts/quantize_draft.py, or SPECOPS_DRAFT_MODEL=none, frees memory)")
    return "; ".join(why) + "\n" + str(plan)


# -- readers: the container limit and a model folder's figures ---------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def weight_file_bytes(model_file: Path) -> int:
    """The model file plus its external data (`x.onnx.data`, `x.onnx_data`: same prefix)."""
    return sum(p.stat().st_size for p in model_file.parent.glob(model_file.name + "*") if p.is_file())


def cpu_isa() -> str:
    """The x86 vector extensions onnxruntime's kernels dispatch on; prepacked layouts follow them."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512bw", "avx_vnni", "amx_int8", "amx_tile", "asimd", "sve")
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(("flags", "Features"))).split(":", 1)[1].split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in wanted if f in flags)


def _weights(folder: Path, model_file: Path, name: str, tiled: bool = False) -> tuple[int, int, str | None]:
    """(resident weight bytes, extra bytes while loading, a note). Without a usable prepack the
    kernels repack on the heap while the originals are still mapped: about 2x at load
    (Phi-3 int4: 2.7 -> 5.4 GB, DESIGN.md section 2). The tiled kernel (runtime/graph.py) copies
    its weights from the mapped tile cache, written one tensor at a time: resident once, and what
    is mapped at load is clean file pages the kernel can reclaim (Phi-3 shape: 2.5 GiB resident
    after load, measured)."""
    marker = _read_json(folder / PREPACKED_MARKER)
    if not marker:
        files = weight_file_bytes(model_file)
        return files, 0 if tiled else files, None
    resident = int(marker["resident_weight_bytes"])  # prepacked blobs + initializers nothing repacks
    try:
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = "unknown"
    if (marker.get("onnxruntime"), marker.get("cpu_isa")) != (ort_version, cpu_isa()):
        return resident, resident, (
            f"{name}: prepacked with onnxruntime {marker.get('onnxruntime')} on [{marker.get('cpu_isa')}], "
            f"running {ort_version} on [{cpu_isa()}]: counted as repacked on the heap; prepack again here")
    return resident, 0, None


def figures_from_spec(spec, name: str, tiled: bool = False) -> tuple[ModelFigures, str | None]:
    """A ModelSpec (runtime.model_folder) -> its figures, and a note when a prepack is not usable.
    Reads file sizes, config.json / genai_config.json for head counts, and the prepack marker.
    `tiled`: the model runs on specops' tiled kernel (no heap repack at load)."""
    folder = Path(spec.folder)
    hf = _read_json(folder / "config.json")
    dec = _read_json(folder / "genai_config.json").get("model", {}).get("decoder", {})
    heads = int(hf.get("num_attention_heads") or dec.get("num_attention_heads") or spec.kv_heads)
    hidden = int(hf.get("hidden_size") or dec.get("hidden_size") or heads * spec.head_dim)
    weights, load_extra, note = _weights(folder, Path(spec.model_file), name, tiled)
    return ModelFigures(
        name=name, num_layers=spec.num_layers, kv_heads=spec.kv_heads, head_dim=spec.head_dim,
        context_length=spec.context_length, vocab_size=spec.vocab_size, num_heads=heads, hidden_size=hidden,
        intermediate_size=int(hf.get("intermediate_size") or 4 * hidden), weight_bytes=weights,
        load_extra_bytes=load_extra, kv_copies=1 if spec.share_past_present else 2,
        attn_copies=1 if spec.layout == "builder" else 2), note  # the builder fuses attention (GQA)


def plan_for(settings, target_spec, draft_spec=None, target_kernel: str = "stock",
             proc_self: Path = Path("/proc/self"), fs_root: Path = Path("/")) -> MemoryPlan:
    """The start-up memory check. Call it after reading the model folders, before opening sessions.

    - settings: `specops.config.Settings`; reads max_batch, context_length (0 = the target's own),
      prefill_chunk, memory_limit_bytes (0 = the limit of this process's own cgroup, v1 or v2, the
      smallest on the way up from the path /proc/self/cgroup names), memory_overhead_bytes,
      memory_page_cache_bytes, memory_reclaim_margin, memory_auto_context_cap and memory_min_context.
    - target_spec, draft_spec: `ModelSpec`s from `read_model_folder`; draft_spec None = no draft.
    - target_kernel: "tiled" when the target will run on the tiled kernel (runtime.kernels.resolve).
    - Returns a `MemoryPlan`. Load with `plan.context_cap` as the cap, e.g.
      `settings.model_copy(update={"context_length": plan.context_cap})`; `plan.lowered` says it
      is below what was asked. `plan.to_dict()` is for /health, `plan.summary()` for the log,
      `str(plan)` is the full table. With no limit anywhere, the plan is returned as it is (fits).
    - Raises `BudgetError` (a ValueError) whose message gives the reason, the numbers and what
      would help, when the plan cannot fit and the cap may not (or cannot) be lowered enough.
    - proc_self, fs_root: where /proc/self and / are (a fake tree in tests).
    Reads only files: model folder sizes and configs, the prepack marker, the cgroup limit.
    """
    target, note_t = figures_from_spec(target_spec, "target", tiled=target_kernel == "tiled")
    draft, note_d = figures_from_spec(draft_spec, "draft") if draft_spec is not None else (None, None)
    notes = tuple(n for n in (note_t, note_d) if n)
    limit = settings.memory_limit_bytes or None
    if limit is None:
        found = read_memory_limit(proc_self, fs_root)
        limit = found[0] if found else None
        notes += (f"memory limit from the cgroup {found[1]}",) if found else (
            "no memory limit set or found in this process's cgroup: nothing enforced",)
    return choose_plan(target, draft, limit_bytes=limit,
                       requested_context=min(settings.context_length or target.context_length,
                                             target.context_length),
                       prefill_chunk=settings.prefill_chunk, overhead_bytes=settings.memory_overhead_bytes,
                       auto_cap=settings.memory_auto_context_cap, min_context=settings.memory_min_context,
                       notes=notes, batch=settings.max_batch, reserves=reserves_for(settings, limit))


def reserves_for(settings, limit: int | None) -> tuple[tuple[str, int], ...]:
    """What a limit must leave free beyond weights, caches and overhead: the page cache the process
    keeps using, and a reclaim margin (a share of the limit). Without them a plan can fit on paper
    and thrash in the cgroup: mapped weights reclaimed and read back every pass (issue 23's
    rehearsal: 1,000-8,000 major faults per token at 36 MiB of headroom in 4Gi)."""
    if limit is None:
        return ()
    return (("page cache in use", settings.memory_page_cache_bytes),
            ("reclaim margin", int(limit * settings.memory_reclaim_margin)))
