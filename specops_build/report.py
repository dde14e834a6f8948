"""Golden outputs (onnxruntime-genai), the quality/cost report, and the checksum manifests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specops.bench import load_prompt_items, prompt_text
from specops.loader import timed_pass
from specops.runtime.model_folder import write_manifest

GOLDEN_NEW_TOKENS = 48


def ort_genai_greedy(folder: Path, texts: list[str], new_tokens: int) -> list[dict]:
    """Greedy ids from an independent implementation, onnxruntime-genai, on the same folder:
    [{"prompt", "prompt_ids", "output_ids"}] per text (prompt ids from its own tokenizer)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    og_tok = og.Tokenizer(model)
    records = []
    for text in texts:
        ids = [int(i) for i in og_tok.encode(text)]
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + new_tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        while not gen.is_done():
            gen.generate_next_token()
        seq = [int(i) for i in gen.get_sequence(0)]
        records.append({"prompt": text, "prompt_ids": ids, "output_ids": seq[len(ids):]})
    return records


def golden_document(records: list[dict], new_tokens: int, **extra) -> str:
    import onnxruntime_genai as og

    return json.dumps({"generator": f"onnxruntime-genai {og.__version__}", "max_new_tokens": new_tokens,
                       **extra, "records": records}, indent=1) + "\n"


def stage_golden(out: Path, log) -> None:
    """Target-only greedy ids of the embedded target from onnxruntime-genai."""
    from specops.runtime.tokenizer import TextTokenizer

    folder = out / "target"
    ours = TextTokenizer(folder)
    prompts = load_prompt_items("free")
    items = [p for p in prompts if p["kind"] == "free"][:12] + [p for p in prompts if p["kind"] == "chat"][:4]
    records = ort_genai_greedy(folder, [prompt_text(item, ours) for item in items], GOLDEN_NEW_TOKENS)
    path = out / "golden" / "target_greedy.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(golden_document(records, GOLDEN_NEW_TOKENS))
    log(f"golden: {len(records)} prompts from onnxruntime-genai greedy -> {path}")


def pass_costs(target, draft, past: int = 100, blocks: int = 40, block: int = 8) -> dict:
    """Median ms of one pass over 1 and 5 new tokens after `past` tokens.

    Passes run in blocks of `block` of one kind (a draft proposes several tokens in a row; the
    target verifies once), the four kinds taking turns, so that all of them see the same
    machine over the run (a shared machine drifts)."""
    ids = (np.arange(past + 5) % 500 + 3).tolist()
    for dec in (target, draft):
        dec.reset()
        dec.prefill(ids[:past])
    times: dict[str, list[float]] = {}
    for _ in range(blocks):
        for name, dec in (("target", target), ("draft", draft)):
            for n in (1, 5):
                times.setdefault(f"{name}_{n}_ms", []).extend(
                    timed_pass(dec, ids[past:past + n]) * 1000 for _ in range(block))
    out = {k: round(float(np.median(v)), 3) for k, v in times.items()}
    out["ratio_1_token"] = round(out["target_1_ms"] / out["draft_1_ms"], 2)
    return out


def perplexity(decoder, docs: list[list[int]], window: int = 512) -> float:
    nll, count = 0.0, 0
    for ids in docs:
        ids = ids[:window]
        decoder.reset()
        logits = decoder.append(ids[:-1]).astype(np.float64)  # [n - 1, V]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
    decoder.reset()
    return float(np.exp(nll / count))


def stage_report(out: Path, work: Path, plan, log) -> None:
    from specops.config import Settings
    from specops.engine.sampling_params import SamplingParams
    from specops.loader import ModelPaths, load_engine
    from specops_build.corpus import load_corpus

    paths = ModelPaths(out / "target", out / "target", out / "draft", out / "draft")
    engine = load_engine(Settings(verify_checksums=False), paths, calibrate=False)
    report: dict = {"sizes_mb": {}, "plan": {"target": vars(plan.target), "draft": vars(plan.draft),
                                             "seed": plan.seed, "target_steps": plan.target_steps}}
    if (losses_file := work / "target_losses.json").exists():
        training = json.loads(losses_file.read_text())
        losses = training.pop("losses")
        report["target_training"] = {**training, "first_50_mean_loss": round(float(np.mean(losses[:50])), 3),
                                     "last_50_mean_loss": round(float(np.mean(losses[-50:])), 3)}
    for name in ("target", "draft"):
        report["sizes_mb"][name] = round(sum(f.stat().st_size for f in (out / name).iterdir()) / 1e6, 2)
    report["pass_costs"] = pass_costs(engine.target, engine.draft.decoder)
    log(f"report: pass costs {report['pass_costs']}")
    docs = [engine.tokenizer.encode(d) for d in load_corpus().held_out]
    report["held_out_perplexity"] = {"target": round(perplexity(engine.target, docs), 2),
                                     "draft": round(perplexity(engine.draft.decoder, docs), 2),
                                     "tokens": int(sum(min(len(d), 512) - 1 for d in docs))}
    log(f"report: held-out perplexity {report['held_out_perplexity']}")
    # Greedy agreement = acceptance of one-token draft proposals against target greedy.
    accepted = proposed = 0
    samples = []
    for item in load_prompt_items("free"):
        ids = engine.tokenizer.encode(prompt_text(item, engine.tokenizer))
        res = engine.generate(ids, SamplingParams(max_new_tokens=64, speculator="draft", k_draft=1))
        accepted += res.stats.accepted
        proposed += res.stats.proposed
        if sum(x["kind"] == item["kind"] for x in samples) < 4:  # 4 free-text and 4 chat samples
            sampled = engine.generate(ids, SamplingParams(max_new_tokens=64, temperature=0.8, top_k=40, seed=0,
                                                          speculator="none"))
            samples.append({"kind": item["kind"], "prompt": item["prompt"], "greedy": res.text,
                            "sampled_t0.8_top40": sampled.text})
    report["draft_target_greedy_agreement"] = round(accepted / max(proposed, 1), 3)
    report["samples"] = samples
    log(f"report: draft/target greedy agreement {report['draft_target_greedy_agreement']}")
    (out / "build_report.json").write_text(json.dumps(report, indent=1) + "\n")


def stage_manifest(out: Path, log) -> None:
    """manifest.sha256 in each model folder (sha256sum format), verified at load."""
    for name in ("target", "draft", "golden"):
        log(f"manifest: {write_manifest(out / name)} files in {out / name}")
