"""Markdown tables from the JSON reports the benchmarks wrote (docs/bench/*.json), so a page's
figures cannot drift from its data. A page marks each table with the renderer and its files
(paths relative to the page):

    <!-- table: speculators bench/latest.json -->
    | ... the rendered table ... |
    <!-- end table -->

`render_page` rewrites every marked table; scripts/render_docs.py writes the pages (or, with
--check, fails on a difference) and tests/test_docs.py holds each page to its JSON. A new figure:
its JSON in docs/bench/, a marker, and, if no renderer below fits, a function in RENDERERS
(reports in, rows out)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

Rows = tuple[list[str], list[list[str]]]  # header, rows
MARKER = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _n(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _set_name(name: str) -> str:
    return name.removesuffix("_real")


# -- renderers: reports (one per file named in the marker) -> header, rows ----------------------------
def speculators(report: dict) -> Rows:
    """`specops bench speculators`: each speculator against target-only decoding, same run."""
    header = ["set", "speculator", "TPJ", "per-token acceptance", "tok/s", "speedup", "bound (best k)"]
    rows = []
    for set_name, part in report["sets"].items():
        for s, r in part["speculators"].items():
            bound = f"{r['bound']:.2f}x (k {r['bound_k']})" if r.get("bound") else ""
            acceptance = "-" if s == "none" else _n(r["per_token_acceptance"], 2)
            rows.append([_set_name(set_name), s, _n(r["tpj"], 2), acceptance, _n(r["tok_s"]), _x(r.get("speedup")),
                         bound])
    return header, rows


def _peer_rate(peers: dict, name: str) -> float | None:
    for key in (name, name.removeprefix("ort_genai_")):  # (older reports name onnxruntime-genai's modes bare)
        if key in peers:
            return peers[key]["tok_s"]
    return None


def peers(report: dict) -> Rows:
    """`specops bench speculators --peers/--baseline-folder`: ours against each peer in the same
    interleaved loop; `ours / peer` is the median of per-prompt ratios; a peer that is this engine
    under other settings also gets its own speculator's speedup there."""
    header = ["set", "ours", "our tok/s", "peer", "peer tok/s", "ours / peer", "peer's own speedup"]
    rows = []
    for set_name, part in report["sets"].items():
        own = {**{f"specops_stock_{k}": v for k, v in part.get("stock_kernel_speedups", {}).items()},
               **{f"specops_baseline_{k}": v for k, v in part.get("baseline_speedups", {}).items()}}
        for key, ratio in part.get("peer_ratios", {}).items():
            mine, theirs = key.split("_vs_", 1)
            rows.append([_set_name(set_name), mine, _n(part["speculators"][mine]["tok_s"]), theirs,
                         _n(_peer_rate(part.get("peers", {}), theirs)), _x(ratio),
                         _x(own[theirs]) if theirs in own else ""])
    return header, rows


def headline(report: dict) -> Rows:
    """A short `specops bench speculators` table: each speculator's rate and speedup, and each
    other server's rate in the same run (this engine under other settings left out)."""
    header = ["set", "speculator", "tok/s", "speedup vs target-only", "other servers, same run: tok/s (ours / theirs)"]
    rows = []
    for set_name, part in report["sets"].items():
        for s, r in part["speculators"].items():
            others = [f"{theirs} {_n(_peer_rate(part.get('peers', {}), theirs))} ({_x(ratio)})"
                      for key, ratio in part.get("peer_ratios", {}).items()
                      for mine, theirs in [key.split("_vs_", 1)] if mine == s and not theirs.startswith("specops_")]
            rows.append([_set_name(set_name), s, _n(r["tok_s"]), _x(r.get("speedup")), ", ".join(others)])
    return header, rows


def structured(report: dict) -> Rows:
    """`specops bench speculators --sets structured [--peers llama_cpp,openvino]`: each of our
    speculators and each peer under its own structured output, same prompts, one interleaved run.
    TPJ: tokens per target pass (ours); ratios are medians of per-prompt ratios."""
    header = ["set", "", "tok/s", "TPJ", "s per output", "valid", "speedup vs our target-only",
              "auto / it, tok/s", "it / auto, s per output"]
    rows = []
    for set_name, part in report["sets"].items():
        seconds = part.get("time_per_output_s", {})
        for s, r in part["speculators"].items():
            rows.append([_set_name(set_name), f"ours, {s}", _n(r["tok_s"], 1), _n(r["tpj"], 2), _n(seconds.get(s), 2),
                         f"{part['valid'][s]:.0%}", _x(r.get("speedup")), "", ""])
        for name, r in part.get("peers", {}).items():
            valid = f"{r['valid']:.0%}" + (f" ({r['errors']} errors)" if r.get("errors") else "")
            rows.append([_set_name(set_name), name, _n(r["tok_s"], 1), "-", _n(r.get("s_per_output"), 2), valid, "",
                         _x(part.get("peer_ratios", {}).get(f"auto_vs_{name}")),
                         _x(part.get("peer_time_ratios", {}).get(f"auto_vs_{name}"))])
    return header, rows


def batching(report: dict) -> Rows:
    """`specops bench serve` (started servers): max_batch 1 against max_batch B, 1 and C clients."""
    batches = sorted((k for k in report if re.fullmatch(r"b\d+", k)), key=lambda k: int(k[1:]))
    many = max((k for k in report[batches[-1]] if k.startswith("clients_")), key=lambda k: int(k.split("_")[1]))
    c = many.split("_")[1]
    header = ["", "1 client, tok/s", f"{c} clients, tok/s", f"p50 latency, {c} clients",
              f"TTFT p50, {c} clients", "errors"]
    rows = []
    for b in batches:
        one, n = report[b]["clients_1"], report[b][many]
        rows.append([f"max_batch {b[1:]}", _n(one["tokens_per_s"]), _n(n["tokens_per_s"]),
                     f"{n['latency_ms']['p50'] / 1000:.2f} s", f"{n['ttft_ms']['p50'] / 1000:.2f} s",
                     str(one["errors"] + n["errors"])])
    if "openvino" in report:
        ov = report["openvino"]
        rows.append(["OpenVINO GenAI, same prompts", f"{_n(ov['one_at_a_time_tok_s'])} one at a time",
                     f"{_n(ov['batched_tok_s'])} in one generate call", "", "", ""])
    return header, rows


def fidelity(*reports: dict) -> Rows:
    """scripts/fidelity.py: the served model against its fp32 reference, one row per report."""
    header = ["target", "kernel, precision", "teacher-forced top-1 agreement", "identical continuations",
              "capital of France"]
    rows = []
    for r in reports:
        target = r.get("label") or Path(r["target_model"]).name
        answer = r["capital_answer"]
        capital = "Paris" if "Paris" in answer else f'"{answer[:40]}..."'
        rows.append([target, f"{r['kernel']}, {r['precision']}", f"{r['agreement']:.3f}",
                     f"{r['identical']} / {r['prompts']}", capital])
    return header, rows


def precisions(report: dict) -> Rows:
    """`specops profile --json`: the pass curve at each kernel precision, and stock onnxruntime's."""
    n = len(report["baseline_verify_ms"])
    header = ["tokens in the pass, ms", *map(str, range(1, n + 1)), f"{n} / 1"]
    curves = {"stock onnxruntime": report["baseline_verify_ms"]}
    curves.update({(f"{p} (auto's choice)" if p == report.get("precision") else p): ms
                   for p, ms in report["precision_ms"].items()})
    return header, [[name, *(_n(v, 1) for v in ms), _x(ms[-1] / ms[0])] for name, ms in curves.items()]


def profiles(*reports: dict) -> Rows:
    """`specops profile --json` of several models: each one's stock onnxruntime curve and the curve
    as the engine runs it (the tiled kernel; a two-row plain step where consistent passes are on,
    with the one-row pass beside it when the profile timed it)."""
    n = len(reports[0]["verify_ms"])
    rows = []
    for r in reports:
        name = r.get("label") or Path(r["target"]).name
        rows.append([f"{name}, stock", *(_n(v, 1) for v in r["baseline_verify_ms"])])
        engine = [_n(v, 1) for v in r["verify_ms"]]
        if r.get("one_row_ms") and r["one_row_kernel_differs"]:
            engine[0] = f"{r['one_row_ms']:.1f} ({engine[0]} as a two-row step)"
        two_row = " (two-row step)" if r["one_row_kernel_differs"] and not r.get("one_row_ms") else ""
        rows.append([f"{name}, {r['kernel']}{two_row}", *engine])
    return ["tokens in the pass, ms", *map(str, range(1, n + 1))], rows


def curves(report: dict) -> Rows:
    """`specops bench curves`: each candidate's pass over 1..N tokens."""
    n = len(next(iter(report["curves_ms"].values())))
    header = ["tokens in the pass, ms", *map(str, range(1, n + 1))]
    return header, [[name, *(_n(v, 1) for v in ms)] for name, ms in report["curves_ms"].items()]


def _run_name(r: dict) -> str:
    return r.get("label") or Path(r["env"]["SPECOPS_TARGET_MODEL"]).name


def rehearsals(*reports: dict) -> Rows:
    """scripts/pod_rehearsal.py: one row per run (a path of the Deployment in its memory cgroup):
    ready time, the plan, memory under load, OOM kills and limit hits, major faults per generated
    token, tok/s (every request's tokens over the load's duration), TTFT."""
    header = ["run", "ready", "context cap / max_batch", "peak charged under load (anon + page cache), MiB",
              "largest working set (anon + mapped), MiB", "OOM kills, failcnt", "major faults / token", "tok/s",
              "TTFT p50 / p90 (s)", "requests (errors)"]
    rows = []
    for r in reports:
        plan, load, mem = r.get("plan") or {}, r.get("load") or {}, r.get("under_load") or {}
        peak, ttft = mem.get("at_sampled_peak_mib", {}), load.get("ttft_s") or {}
        rows.append([_run_name(r), "not ready" if r.get("ready_s") is None else f"{r['ready_s']:.0f} s",
                     f"{plan.get('context_cap')} / {plan.get('max_batch')}",
                     f"{_n(mem.get('peak_mib'))} ({_n(peak.get('anon'))} + {_n(peak.get('file'))})" if mem else "-",
                     _n(mem.get("max_anon_plus_mapped_mib")), f"{r.get('oom_kills')}, {r.get('limit_hits')}",
                     _n(load.get("major_faults_per_token"), 2), _n(load.get("tokens_per_s"), 2),
                     f"{_n(ttft.get('p50'), 1)} / {_n(ttft.get('p90'), 1)}",
                     f"{load.get('requests')} ({load.get('errors')})"])
    return header, rows


def rehearsal_speculators(*reports: dict) -> Rows:
    """scripts/pod_rehearsal.py --speculators: per run and speculator (the requests named them in
    turn, one server): decode rate per request (tokens after the first over the time after it),
    the server's tokens per target pass, TTFT."""
    header = ["run", "speculator", "requests", "tokens", "decode tok/s p50 (pooled)", "tokens per pass",
              "TTFT p50 / p90 (s)"]
    rows = []
    for r in reports:
        load = r.get("load") or {}
        servers = load.get("server_by_speculator") or {}
        for name, row in load.get("by_speculator", {}).items():
            decode, ttft = row["decode_tok_s"], row["ttft_s"]
            rows.append([_run_name(r), name, str(row["requests"]), str(row["tokens"]),
                         f"{_n(decode.get('p50'), 2)} ({_n(row['decode_tok_s_pooled'], 2)})",
                         _n((servers.get(name) or {}).get("tokens_per_pass"), 3),
                         f"{_n(ttft.get('p50'), 1)} / {_n(ttft.get('p90'), 1)}"])
    return header, rows


RENDERERS: dict[str, Callable[..., Rows]] = {
    "speculators": speculators, "peers": peers, "headline": headline, "structured": structured,
    "batching": batching, "fidelity": fidelity, "precisions": precisions, "profiles": profiles, "curves": curves,
    "rehearsals": rehearsals, "rehearsal_speculators": rehearsal_speculators}


def caption(reports: list[dict]) -> str:
    """Under a table: each report's recorded command, date and machine (`specops bench` writes them
    under "run"), when it has them."""
    lines = []
    for r in reports:
        run = r.get("run")
        if run:
            m = run.get("machine", {})
            cpu = m.get("cpu", "") if isinstance(m, dict) else str(m)
            lines.append(f"\n`{run['command']}` ({run['date']}; {cpu})\n")
    return "".join(lines)


def render(spec: str, folder: Path) -> str:
    """One marked table: `spec` is "renderer file [file ...]", files relative to `folder`."""
    name, *files = spec.split()
    if name not in RENDERERS:
        raise ValueError(f"no table renderer {name!r}: one of {sorted(RENDERERS)}")
    reports = [json.loads((folder / f).read_text()) for f in files]
    return table(*RENDERERS[name](*reports)) + caption(reports)


def render_page(text: str, folder: Path) -> str:
    """The page with every marked table rendered again from its JSON."""
    return MARKER.sub(lambda m: m.group(1) + render(m.group("spec"), folder) + m.group(4), text)


def marked_tables(text: str) -> list[str]:
    """The specs of a page's marked tables."""
    return [m.group("spec") for m in MARKER.finditer(text)]
