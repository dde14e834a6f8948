#!/usr/bin/env python
"""onnxruntime-genai's own generators on our model folders: exactness against its plain greedy,
then tokens/s of each mode against greedy (same run, interleaved repeats, medians).

Modes: greedy; ngram (prompt lookup); draft on the draft as it is (onnxruntime-genai refuses a
different logits width: the refusal is reported verbatim); draft on a same-vocabulary variant
(made on the fly by make_same_vocab_draft.py, kept under build/peers).

    python scripts/peers/bench_ort_genai.py [--target models/target] [--draft models/draft] \
        [--repeats 3] [--max-new-tokens 64] [--k 4 ...] [--ngram 3:4 ...] [--methods graph builder]
        [--limit 0]

--ngram takes SIZE:K[:c][:aN] (c: ngram_chained_lookup, aN: min_adaptive_k=N), one mode each;
--k takes one or more max_draft_tokens, one draft mode per k and variant method.

Prints one JSON line (a table goes to stderr). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import ort_genai as peers  # noqa: E402

from specops.bench import first_divergence, prompt_text  # noqa: E402


def load_prompts(target: Path, files: list[Path], limit: int) -> dict[str, list[tuple[str, list[int]]]]:
    """Prompt ids as our engine would build them (its tokenizer and chat template)."""
    from specops.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer(target)
    out: dict[str, list[tuple[str, list[int]]]] = {}
    for f in files:
        items = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if limit:
            items = items[:limit]
        out[f.stem] = [(item["kind"], tok.encode(prompt_text(item, tok))) for item in items]
    return out


def near_tie_gap(greedy: peers.Runner, ids: list[int]) -> tuple[float, list[int]]:
    """Top-2 logit gap of the target after ids (onnxruntime-genai's own forward pass)."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(greedy.model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 1)
    gen = og.Generator(greedy.model, params)
    gen.append_tokens(np.asarray(ids, dtype=np.int32))
    logits = np.asarray(gen.get_logits()).reshape(-1)
    top = np.argsort(logits)[-2:][::-1]
    return float(logits[top[0]] - logits[top[1]]), [int(t) for t in top]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=Path, default=ROOT / "models" / "target")
    ap.add_argument("--draft", type=Path, default=ROOT / "models" / "draft")
    ap.add_argument("--prompts", type=Path, nargs="+",
                    default=[ROOT / "prompts" / "copy.jsonl", ROOT / "prompts" / "free.jsonl"])
    ap.add_argument("--draft-hf", type=Path, default=ROOT / "build" / "default_models" / "draft_hf",
                    help="the draft's HF checkpoint, for the model-builder variant (skipped if absent)")
    ap.add_argument("--variant-root", type=Path, default=ROOT / "build" / "peers",
                    help="where the same-vocabulary variants are made (reused while their sources are unchanged)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, nargs="+", default=[4], help="max_draft_tokens of the draft modes")
    ap.add_argument("--draft-adaptive", type=int, default=0, help="min_adaptive_k of the draft modes (0: fixed k)")
    ap.add_argument("--ngram", nargs="+", default=["3:4"], help="n-gram modes, SIZE:K[:c][:aN]")
    ap.add_argument("--methods", nargs="+", default=["graph", "builder"], choices=["graph", "builder"],
                    help="same-vocabulary variants to run (builder needs --draft-hf)")
    ap.add_argument("--limit", type=int, default=0, help="first N prompts of each file (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tie-eps", type=float, default=1e-2,
                    help="top-2 gap (target prefill logits at the divergence) below which a difference whose "
                         "tokens are the top two counts as a near-tie; tests/conftest.py uses 1e-3 for our "
                         "engine, genai's multi-token passes differ from its single steps by ~3e-3 here")
    ap.add_argument("--skip-exactness", action="store_true")
    args = ap.parse_args()

    common = {"threads": args.threads}
    runners: dict[str, peers.Runner] = {"greedy": peers.greedy_runner(args.target, **common)}
    refused: dict[str, dict] = {}
    for spec in args.ngram:
        size, k, *flags = spec.split(":")
        adaptive = next((int(f[1:]) for f in flags if f.startswith("a")), 0)
        runners[f"ngram_{spec}"] = peers.ngram_runner(args.target, int(k), int(size), chained="c" in flags,
                                                      min_adaptive_k=adaptive, **common)
    try:
        runners["draft"] = peers.draft_runner(args.target, args.draft, args.k[0], **common)
    except peers.PeerRefused as e:
        refused["draft"] = e.as_dict()
    variant_seconds = {}
    hf = args.draft_hf if args.draft_hf and (args.draft_hf / "config.json").exists() else None
    for method in args.methods:
        draft_hf = hf if method == "builder" else None
        if method == "builder" and draft_hf is None:
            continue
        vdir = args.variant_root / f"draft_same_vocab_{method}"
        for k in args.k:
            name = f"draft_{method}_k{k}" + (f"a{args.draft_adaptive}" if args.draft_adaptive else "")
            t = time.perf_counter()
            try:
                runners[name] = peers.same_vocab_draft_runner(
                    args.target, args.draft, k, variant_dir=vdir, draft_hf=draft_hf,
                    min_adaptive_k=args.draft_adaptive, **common)
            except peers.PeerRefused as e:
                refused[name] = e.as_dict()
            variant_seconds[name] = round(time.perf_counter() - t, 2)
    configs = {name: r.config for name, r in runners.items()}

    prompts = load_prompts(args.target, args.prompts, args.limit)
    modes = list(runners)

    # ---- exactness: each mode's greedy output vs plain greedy
    exact: dict[str, dict] = {}
    if not args.skip_exactness:
        refs = {(f, i): runners["greedy"](ids, args.max_new_tokens)["tokens"]
                for f, rows in prompts.items() for i, (_, ids) in enumerate(rows)}
        for mode in modes[1:]:
            same, diffs = 0, []
            for fname, rows in prompts.items():
                for idx, (kind, ids) in enumerate(rows):
                    ref = refs[(fname, idx)]
                    got = runners[mode](ids, args.max_new_tokens)["tokens"]
                    pos = first_divergence(ref, got)
                    if pos is None:
                        same += 1
                        continue
                    gap, top2 = near_tie_gap(runners["greedy"], ids + ref[:pos]) if pos < len(ref) else (None, [])
                    diffs.append({"file": fname, "prompt": idx, "kind": kind, "position": pos,
                                  "greedy": ref[pos:pos + 3], "mode": got[pos:pos + 3], "top2": top2,
                                  "top2_gap": gap, "near_tie": gap is not None and gap < args.tie_eps
                                  and {ref[pos], got[pos] if pos < len(got) else -1} <= set(top2)})
            exact[mode] = {"identical": same, "prompts": same + len(diffs), "differences": diffs}

    # ---- speed: interleaved repeats, mode order rotated each repeat
    rates = {f: {m: [] for m in modes} for f in prompts}
    decode_rates = {f: {m: [] for m in modes} for f in prompts}
    tpj = {f: {m: [] for m in modes} for f in prompts}
    accept = {f: {m: [] for m in modes} for f in prompts}
    ratios = {f: {m: [] for m in modes} for f in prompts}
    empty = {f: {m: 0 for m in modes} for f in prompts}
    for rep in range(args.repeats):
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for fname, rows in prompts.items():
            for kind, ids in rows:
                got = {}
                for mode in order:
                    res = runners[mode](ids, args.max_new_tokens)
                    n = len(res["tokens"])
                    if n == 0:  # the target ended the turn at once (end-of-sequence is not returned)
                        empty[fname][mode] += 1
                        continue
                    got[mode] = n / res["seconds"]
                    rates[fname][mode].append(got[mode])
                    if n > 1:
                        decode_rates[fname][mode].append((n - 1) / res["decode_seconds"])
                    tpj[fname][mode].append(res["stats"]["tpj"])
                    if "acceptance_rate" in res["stats"] and mode != "greedy":
                        accept[fname][mode].append(res["stats"]["acceptance_rate"])
                for mode in got:
                    if "greedy" in got:
                        ratios[fname][mode].append(got[mode] / got["greedy"])

    med = lambda xs: round(float(np.median(xs)), 3) if xs else None  # noqa: E731
    speed = {f: {m: {"tok_s_median": med(rates[f][m]), "decode_tok_s_median": med(decode_rates[f][m]),
                     "ratio_vs_greedy_median": med(ratios[f][m]), "tpj_median": med(tpj[f][m]),
                     "acceptance_median": med(accept[f][m]), "runs": len(rates[f][m]),
                     "empty_runs": empty[f][m]} for m in modes} for f in prompts}
    summary = {
        "bench": "ort_genai_peers", "onnxruntime_genai": __import__("onnxruntime_genai").__version__,
        "cores": os.cpu_count(), "target": str(args.target), "draft": str(args.draft),
        "repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
        "prompts": {f: len(r) for f, r in prompts.items()}, "configs": configs, "refused": refused,
        "variant_seconds": variant_seconds, "exactness": exact, "speed": speed,
    }
    print(json.dumps(summary))
    for f in prompts:
        for m in modes:
            s = speed[f][m]
            print(f"{f:6s} {m:22s} {s['tok_s_median'] or 0:9.1f} tok/s  x{s['ratio_vs_greedy_median'] or 0:.3f}  "
                  f"tpj {s['tpj_median']}  acc {s['acceptance_median']}", file=sys.stderr)
    for m, e in exact.items():
        print(f"exactness {m}: {e['identical']}/{e['prompts']} identical; "
              f"{sum(d['near_tie'] for d in e['differences'])} near-tie differences", file=sys.stderr)
    for m, r in refused.items():
        print(f"refused {m}: {r['refused']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
