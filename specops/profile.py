"""`specops profile`: does speculation pay on this machine, for these models?

Measures what a target pass over n = 1..N tokens costs here (after `past` tokens of context),
on stock onnxruntime (`baseline_verify_ms`: the folder's graph as it is, one-token passes on the
one-row kernel) and on the path the engine uses (`verify_ms`: the engine's graph and matmul
kernel, `kernel`: "tiled" = specops' own where it runs; with consistent passes a one-token pass
runs as two rows),
what a draft pass costs, and predicts each speculator's speedup over target-only decoding for
per-token acceptance 0.5..0.9 at the best k (Leviathan et al.'s bound with the measured curve):

    speedup(a, k) = E(a, k) / (verify(k + 1) / verify(1) + k c),   c = draft pass / verify(1)

where verify(1) is the engine's plain step. Passes of all lengths are timed interleaved, round
after round, and each length keeps its median, so drift of a shared machine spreads over all.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
import time
from dataclasses import dataclass, field

import numpy as np

from .bench import cost_bound
from .runtime.decoder import Decoder

ACCEPTANCES = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Curve:
    """Median milliseconds of one pass over n tokens, n = 1..len(ms)."""
    ms: list[float]
    samples: int

    def ratio(self, n: int) -> float:
        return self.ms[min(n, len(self.ms)) - 1] / self.ms[0]


def pass_curve(decoder: Decoder, max_tokens: int = 9, past: int = 100, rounds: int = 7, per_round: int = 3,
               warmup: int = 2) -> Curve:
    """Time passes of 1..max_tokens tokens on top of `past` cached tokens, the cache rewound
    after each; `rounds` sweeps over all lengths (shortest and longest alternate), `per_round`
    timed passes of each length per sweep after `warmup` untimed ones (a pass right after a
    longer one costs more, for a few passes: Phi-3 shape, a two-row pass timed after nine-row
    passes with one warm-up read 136 against 114 ms)."""
    ids = (np.arange(past + max_tokens) % 200 + 3).tolist()
    decoder.reset()
    decoder.prefill(ids[:past])
    times: dict[int, list[float]] = {n: [] for n in range(1, max_tokens + 1)}
    for r in range(rounds):
        order = range(1, max_tokens + 1) if r % 2 == 0 else range(max_tokens, 0, -1)
        for n in order:
            chunk = ids[past:past + n]
            for i in range(warmup + per_round):
                t = time.perf_counter()
                decoder.append(chunk, copy=False)
                seconds = time.perf_counter() - t
                decoder.rewind(past)
                if i >= warmup:
                    times[n].append(seconds)
    decoder.reset()
    return Curve([round(float(np.median(times[n])) * 1e3, 3) for n in sorted(times)], rounds * per_round)


def best_k(a: float, curve: Curve, c: float, k_max: int) -> tuple[int, float]:
    """The k in 1..k_max with the highest predicted speedup, and that speedup."""
    return max(((k, cost_bound(a, k, curve.ratio(k + 1), c)) for k in range(1, k_max + 1)), key=lambda kv: kv[1])


def predictions(curve: Curve, c: float | None, acceptances=ACCEPTANCES) -> dict[str, list[dict]]:
    """Per speculator, per acceptance: the best k and its predicted speedup. n-gram proposals
    cost nothing to make (c = 0); the draft's pass costs c of a plain target step."""
    k_max = len(curve.ms) - 1
    kinds = {"ngram": 0.0} | ({"draft": c} if c is not None else {})
    out = {}
    for kind, cost in kinds.items():
        rows = []
        for a in acceptances:
            k, speedup = best_k(a, curve, cost, k_max)
            rows.append({"acceptance": a, "k": k, "speedup": round(speedup, 3)})
        out[kind] = rows
    return out


@dataclass
class Profile:
    target: str
    baseline_verify_ms: list[float]
    verify_ms: list[float]
    one_row_kernel_differs: bool
    kernel: str = "stock"
    kernel_note: str | None = None
    one_row_ms: float | None = None  # the engine path's one-token pass on its one-row shape
    precision: str | None = None  # the tiled kernel's activations as served (None: stock kernels)
    precision_ms: dict = field(default_factory=dict)  # the engine path's curve at each precision the kernel runs
    draft: str | None = None
    draft_pass_ms: float | None = None
    c: float | None = None
    predicted: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    def table(self) -> str:
        """The human-readable report."""
        n = len(self.verify_ms)
        lines = [f"target {self.target}",
                 "tokens in pass     " + "".join(f"{i:>8}" for i in range(1, n + 1)),
                 "stock onnxruntime  " + "".join(f"{v:8.2f}" for v in self.baseline_verify_ms) + "  ms",
                 "  ratio            " + "".join(f"{v / self.baseline_verify_ms[0]:8.2f}"
                                                 for v in self.baseline_verify_ms),
                 f"engine ({self.kernel:<6})    " + "".join(f"{v:8.2f}" for v in self.verify_ms) + "  ms",
                 "  ratio to a step  " + "".join(f"{v / self.verify_ms[0]:8.2f}" for v in self.verify_ms)]
        if self.kernel_note:
            lines.append(f"(stock kernels on the engine path: {self.kernel_note})")
        for name, ms in self.precision_ms.items():
            served = " (served)" if name == self.precision else ""
            lines.append(f"  {name} activations " + "".join(f"{v:8.2f}" for v in ms) + f"  ms{served}")
        if self.one_row_kernel_differs:
            lines.append("(one-row kernel differs from the GEMM: the engine runs one-token passes as two rows; "
                         f"one row alone: {self.one_row_ms:.2f} ms)")
        if self.draft:
            lines.append(f"draft {self.draft}: {self.draft_pass_ms:.3f} ms a pass, c = {self.c:.3f}")
        lines.append("predicted speedup over target-only (best k) at per-token acceptance:")
        lines.append("             " + "".join(f"{r['acceptance']:>12}" for r in next(iter(self.predicted.values()))))
        for kind, rows in self.predicted.items():
            lines.append(f"  {kind:<10} " + "".join(f"{r['speedup']:8.2f}x k={r['k']:<2}" for r in rows))
        return "\n".join(lines)


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(), "flags": cpu_flags(), "onnxruntime": metadata.version("onnxruntime"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def cpu_flags() -> list[str]:
    """The CPU flags the kernels dispatch on (AVX-512, VNNI, BF16, AMX), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni")))


def precision_curves(target, served: Curve, max_tokens: int, past: int, rounds: int) -> dict[str, list[float]]:
    """The engine path's curve at every precision the tiled kernel runs here (the served one is
    `served`); nothing on stock kernels."""
    if target.precision is None:
        return {}
    chosen, curves = target.precision, {}
    try:
        for name in target.available_precisions():
            target.use_precision(name)
            curves[name] = served.ms if name == chosen else pass_curve(target, max_tokens, past, rounds).ms
    finally:
        target.use_precision(chosen)
    return curves


def profile(target, draft: Decoder | None, target_name: str, draft_name: str | None,
            consistent: bool | None = None, max_tokens: int = 9, past: int = 100, rounds: int = 7,
            stock: Decoder | None = None) -> Profile:
    """Measure the stock path (`stock`: a Decoder on the folder's own graph; None = `target`
    itself), the engine's path (`target`, as the loader makes it) and the draft; `consistent`
    None = the engine's auto rule."""
    differs = target.one_row_kernel_differs()
    baseline_decoder = stock or target
    baseline_decoder.min_rows = 1
    baseline = pass_curve(baseline_decoder, max_tokens, past, rounds)
    target.min_rows = 2 if (differs if consistent is None else consistent) else 1
    same = stock is None and target.min_rows == 1
    engine = baseline if same else pass_curve(target, max_tokens, past, rounds)
    one_row = engine.ms[0]
    if target.min_rows > 1:
        target.min_rows = 1
        one_row = pass_curve(target, 1, past, rounds).ms[0]
        target.min_rows = 2
    out = Profile(target_name, baseline.ms, engine.ms, differs, target.kernel, target.kernel_note, one_row,
                  precision=target.precision, machine=machine())
    out.precision_ms = precision_curves(target, engine, max_tokens, past, rounds)
    c = None
    if draft is not None:
        out.draft, out.draft_pass_ms = draft_name, pass_curve(draft, 1, past, rounds, 5).ms[0]
        c = out.c = round(out.draft_pass_ms / engine.ms[0], 4)
    out.predicted = predictions(engine, c)
    return out
