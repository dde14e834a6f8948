#!/usr/bin/env python
"""Peer baselines: onnxruntime-genai's own generators on the same ONNX folders as our engine.

Three modes, each a runner `run(prompt_ids, max_new_tokens) -> {"tokens", "seconds", "stats"}`:

  greedy  target only, its standard generator                      greedy_runner(target_dir)
  ngram   its n-gram (prompt lookup) speculative decoding           ngram_runner(target_dir, k, ngram_size)
  draft   its draft-model speculative decoding                      draft_runner(target_dir, draft_dir, k)

How onnxruntime-genai 0.18 is configured (read from its source, docs and the installed .so):
  * n-gram: an ordinary model + GeneratorParams.set_speculative_options(ngram_size=N>=2,
    max_draft_tokens=K, [ngram_chained_lookup=bool, min_adaptive_k=0..16, cooldown=bool]).
  * draft: a genai_config.json whose `model` has a `draft` block (a complete decoder block like
    `model.decoder`: filename, session_options, sizes, inputs, outputs), plus
    set_speculative_options(max_draft_tokens=K) or a top-level "speculative" section.
    Model filenames may not contain `..`, so a combined folder holds `target/` and `draft/`
    symlinks and the target's tokenizer files (compose_speculative_folder). Target and draft
    session_options must name the same providers/provider options, logits widths must be equal.
  * threads: session_options {"intra_op_num_threads": 2, "inter_op_num_threads": 1,
    "session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}; unknown
    string keys of session_options go to ORT's AddConfigEntry, which is how spinning is set.
    Applied with og.Config.overlay for one folder, written into the combined config for two.

ignore_eos (benchmarks at equal lengths): onnxruntime-genai has no option to commit an end-of-sequence
token and go on, so a runner made with ignore_eos=True sets search option min_length = prompt +
max_new_tokens, which masks the end-of-sequence tokens until then (greedy and speculative modes alike):
every run generates max_new_tokens, though its tokens after the point where it would have ended differ
from an engine that commits the end-of-sequence token.

A configuration onnxruntime-genai refuses raises PeerRefused, whose str() is onnxruntime-genai's
message verbatim (`.message`), so a benchmark can report it as is.

CLI (prints one JSON line):
    python scripts/peers/ort_genai.py --mode draft --target models/target --draft models/draft \
        --prompt "def f(x):" --max-new-tokens 64 [--k 4] [--same-vocab [--draft-hf DIR]]
"""
from __future__ import annotations

import argparse
import atexit
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

try:  # package import (scripts.peers.ort_genai) or a plain file/sys.path import
    from . import make_same_vocab_draft as _msv
except ImportError:  # pragma: no cover - depends on how the file is loaded
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_same_vocab_draft as _msv  # type: ignore

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = _msv.TOKENIZER_FILES


def session_options(threads: int = 2, spinning: bool = False) -> dict:
    """The session_options entries we set on every onnxruntime-genai session."""
    flag = "1" if spinning else "0"
    return {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1,
            "session.intra_op.allow_spinning": flag, "session.inter_op.allow_spinning": flag}


class PeerRefused(RuntimeError):
    """onnxruntime-genai refused a configuration; str(self) is its message verbatim."""

    def __init__(self, mode: str, message: str, stage: str, config: dict | None = None):
        super().__init__(message)
        self.mode, self.message, self.stage, self.config = mode, message, stage, config or {}

    def as_dict(self) -> dict:
        return {"mode": self.mode, "refused": self.message, "stage": self.stage}


def _og():
    import onnxruntime_genai as og
    return og


# --------------------------------------------------------------------------- configuration
def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def draft_decoder_block(draft_dir: Path) -> dict:
    """The draft's decoder block: from its genai_config.json, else read from its ONNX and config.json
    (an Optimum-layout export has no genai_config.json)."""
    draft_dir = Path(draft_dir)
    cfg = draft_dir / "genai_config.json"
    if cfg.exists():
        return copy.deepcopy(_read_json(cfg)["model"]["decoder"])
    return _msv.decoder_block_from_onnx(_msv._find_onnx(draft_dir), _read_json(draft_dir / "config.json"))


def compose_speculative_folder(target_dir, draft_dir, out_dir, *, k: int = 4, threads: int = 2,
                               spinning: bool = False, extra_speculative: dict | None = None) -> Path:
    """Write the combined target+draft folder onnxruntime-genai loads for draft-model decoding:
    out_dir/{target,draft} symlinks, the target's tokenizer files, and genai_config.json =
    the target's config + model.draft + a "speculative" section."""
    target_dir, draft_dir, out_dir = Path(target_dir).resolve(), Path(draft_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, src in (("target", target_dir), ("draft", draft_dir)):
        link = out_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(src, target_is_directory=True)
    for name in TOKENIZER_FILES:
        link = out_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if (target_dir / name).exists():
            link.symlink_to(target_dir / name)
    cfg = _read_json(target_dir / "genai_config.json")
    so = session_options(threads, spinning)
    decoder = cfg["model"]["decoder"]
    decoder["filename"] = "target/" + decoder["filename"]
    decoder.setdefault("session_options", {}).update(so)
    draft = draft_decoder_block(draft_dir)
    draft["filename"] = "draft/" + draft["filename"]
    draft["session_options"] = copy.deepcopy(decoder["session_options"])  # providers must match exactly
    cfg["model"]["draft"] = draft
    cfg["speculative"] = {"max_draft_tokens": int(k), **(extra_speculative or {})}
    with open(out_dir / "genai_config.json", "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


# ------------------------------------------------------------------------------- runners
class Runner:
    """Callable: run(prompt_ids, max_new_tokens) -> {"tokens", "seconds", "stats", ...}."""

    def __init__(self, mode: str, folder: Path, speculative: dict | None, *, threads: int = 2,
                 spinning: bool = False, overlay: bool = True, search: dict | None = None,
                 warmup: bool = True, cleanup: Path | None = None, ignore_eos: bool = False):
        og = _og()
        self.mode, self.folder = mode, Path(folder)
        self.speculative = dict(speculative or {})
        self.search = {"do_sample": False, **(search or {})}
        self.ignore_eos = ignore_eos
        self.session_options = session_options(threads, spinning)
        self._cleanup = cleanup
        self.config = {"folder": str(self.folder), "session_options": self.session_options,
                       "speculative_options": self.speculative, "search_options": self.search}
        if ignore_eos:
            self.config["ignore_eos"] = "min_length = prompt + max_new_tokens"
        try:
            config = og.Config(str(self.folder))
            if overlay:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": self.session_options}}}))
            self.model = og.Model(config)
        except Exception as e:  # onnxruntime-genai raises RuntimeError with its message
            raise PeerRefused(mode, str(e), "model load", self.config) from e
        self.tokenizer = og.Tokenizer(self.model)
        if warmup:  # surfaces a refusal at generator creation now, and warms the sessions
            bos = 1
            self(list(range(bos, bos + 8)) * 2, 4)

    def __call__(self, prompt_ids, max_new_tokens: int) -> dict:
        og = _og()
        ids = np.asarray(prompt_ids, dtype=np.int32)
        t0 = time.perf_counter()
        try:
            params = og.GeneratorParams(self.model)
            params.set_search_options(**self.search_options(len(ids), int(max_new_tokens)))
            if self.speculative:
                params.set_speculative_options(**self.speculative)
            gen = og.Generator(self.model, params)
            gen.append_tokens(ids)
        except Exception as e:
            raise PeerRefused(self.mode, str(e), "generator", self.config) from e
        t1 = time.perf_counter()
        try:
            while not gen.is_done():
                gen.generate_next_token()
        except Exception as e:
            raise PeerRefused(self.mode, str(e), "generate", self.config) from e
        t2 = time.perf_counter()
        tokens = [int(t) for t in gen.get_sequence(0)[len(ids):]]
        raw = gen.get_speculative_stats()
        del gen, params
        return {"tokens": tokens, "seconds": t2 - t0, "prefill_seconds": t1 - t0, "decode_seconds": t2 - t1,
                "stats": summarize_stats(len(tokens), raw, self.speculative)}

    run = __call__

    def search_options(self, prompt_tokens: int, max_new_tokens: int) -> dict:
        """One run's search options: the length cap, and with ignore_eos the same as its floor."""
        length = {"max_length": prompt_tokens + max_new_tokens}
        if self.ignore_eos:
            length["min_length"] = length["max_length"]
        return {**length, **self.search}

    def tokens_per_second(self, prompt_ids, max_new_tokens: int) -> float:
        """One run's generated tokens over its seconds (prefill included), as our engine counts."""
        out = self(prompt_ids, max_new_tokens)
        return len(out["tokens"]) / out["seconds"]

    def close(self) -> None:
        self.model = self.tokenizer = None
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None


def summarize_stats(n_tokens: int, raw: dict, speculative: dict) -> dict:
    """onnxruntime-genai's speculative stats plus TPJ (tokens per target pass, prefill counted,
    so target-only decoding scores exactly 1.0)."""
    keys = ("rounds", "draft_tokens_proposed", "draft_tokens_evaluated", "draft_tokens_accepted",
            "correction_tokens", "bonus_tokens", "draft_forward_passes", "target_forward_passes",
            "target_verify_forward_passes", "target_reanchor_forward_passes",
            "target_reconciliation_forward_passes", "standard_fallback_steps", "ngram_lookup_hits",
            "ngram_lookup_misses", "effective_k", "acceptance_rate", "full_accept_rounds",
            "partial_accept_rounds", "zero_accept_rounds", "total_draft_ms", "total_target_ms")
    out = {k: raw[k] for k in keys if k in raw}
    if not speculative:  # standard generator: one target pass per token (prefill gives the first)
        passes = n_tokens
    else:
        passes = 1 + int(raw.get("target_forward_passes", 0)) + int(raw.get("standard_fallback_steps", 0))
    out["target_passes"] = passes
    out["tpj"] = round(n_tokens / passes, 4) if passes else 0.0
    return out


def greedy_runner(target_dir, *, threads: int = 2, spinning: bool = False, warmup: bool = True,
                  ignore_eos: bool = False) -> Runner:
    return Runner("greedy", Path(target_dir), None, threads=threads, spinning=spinning, warmup=warmup,
                  ignore_eos=ignore_eos)


def ngram_runner(target_dir, k: int = 4, ngram_size: int = 3, *, chained: bool = False,
                 min_adaptive_k: int = 0, cooldown: bool = False, threads: int = 2, spinning: bool = False,
                 warmup: bool = True, ignore_eos: bool = False) -> Runner:
    spec = {"ngram_size": int(ngram_size), "max_draft_tokens": int(k)}
    if chained:
        spec["ngram_chained_lookup"] = True
    if min_adaptive_k:
        spec["min_adaptive_k"] = int(min_adaptive_k)
    if cooldown:
        spec["cooldown"] = True
    return Runner("ngram", Path(target_dir), spec, threads=threads, spinning=spinning, warmup=warmup,
                  ignore_eos=ignore_eos)


def draft_runner(target_dir, draft_dir, k: int = 4, *, min_adaptive_k: int = 0, threads: int = 2,
                 spinning: bool = False, workdir=None, warmup: bool = True, ignore_eos: bool = False) -> Runner:
    """Draft-model speculation on target_dir + draft_dir as they are. A draft whose logits width
    differs from the target's is refused by onnxruntime-genai (PeerRefused, verbatim message);
    use same_vocab_draft_runner for a variant it accepts."""
    cleanup = None
    if workdir is None:
        workdir = cleanup = Path(tempfile.mkdtemp(prefix="ort_genai_spec_"))
        atexit.register(shutil.rmtree, str(cleanup), True)
    folder = compose_speculative_folder(target_dir, draft_dir, Path(workdir), k=k, threads=threads,
                                        spinning=spinning)
    spec = {"max_draft_tokens": int(k)}
    if min_adaptive_k:
        spec["min_adaptive_k"] = int(min_adaptive_k)
    r = Runner("draft", folder, spec, threads=threads, spinning=spinning, overlay=False, warmup=warmup,
               cleanup=cleanup, ignore_eos=ignore_eos)
    cfg = _read_json(folder / "genai_config.json")
    r.config["genai_config"] = {"model.decoder.filename": cfg["model"]["decoder"]["filename"],
                                "model.draft": cfg["model"]["draft"], "speculative": cfg["speculative"]}
    return r


def same_vocab_draft_runner(target_dir, draft_dir, k: int = 4, *, variant_dir=None, draft_hf=None,
                            **kw) -> Runner:
    """draft_runner on a same-vocabulary variant of draft_dir, made (or reused when its sources are
    unchanged) by make_same_vocab_draft in variant_dir (default build/peers/draft_same_vocab_graph,
    or ..._builder when draft_hf, the draft's HF checkpoint, is given: rebuilt with the model builder)."""
    method = "builder" if draft_hf is not None else "graph"
    variant_dir = Path(variant_dir or ROOT / "build" / "peers" / f"draft_same_vocab_{method}")
    _msv.make_same_vocab_draft(draft_dir, target_dir, variant_dir, draft_hf=draft_hf)
    r = draft_runner(target_dir, variant_dir, k, **kw)
    r.config["draft_variant"] = {"dir": str(variant_dir), "method": method}
    return r


RUNNERS: dict[str, Callable[..., Runner]] = {"greedy": greedy_runner, "ngram": ngram_runner, "draft": draft_runner}


# ------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(RUNNERS), required=True)
    ap.add_argument("--target", type=Path, default=ROOT / "models" / "target")
    ap.add_argument("--draft", type=Path, default=None)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the target's chat template")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4, help="max_draft_tokens")
    ap.add_argument("--ngram-size", type=int, default=3)
    ap.add_argument("--chained", action="store_true", help="ngram_chained_lookup")
    ap.add_argument("--min-adaptive-k", type=int, default=0)
    ap.add_argument("--same-vocab", action="store_true",
                    help="draft mode: use a same-vocabulary variant of --draft (made under build/peers)")
    ap.add_argument("--draft-hf", type=Path, default=None,
                    help="with --same-vocab: rebuild the draft from this HF checkpoint with the model builder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spinning", action="store_true", help="leave ORT's thread spinning on")
    ap.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens (min_length)")
    args = ap.parse_args(argv)

    common = {"threads": args.threads, "spinning": args.spinning, "ignore_eos": args.ignore_eos}
    try:
        if args.mode == "greedy":
            runner = greedy_runner(args.target, **common)
        elif args.mode == "ngram":
            runner = ngram_runner(args.target, args.k, args.ngram_size, chained=args.chained,
                                  min_adaptive_k=args.min_adaptive_k, **common)
        else:
            if args.draft is None:
                ap.error("--mode draft needs --draft")
            if args.same_vocab:
                runner = same_vocab_draft_runner(args.target, args.draft, args.k, draft_hf=args.draft_hf,
                                                 min_adaptive_k=args.min_adaptive_k, **common)
            else:
                runner = draft_runner(args.target, args.draft, args.k, min_adaptive_k=args.min_adaptive_k, **common)
    except PeerRefused as e:
        print(json.dumps(e.as_dict()))
        return 3
    text = args.prompt
    if args.chat:
        text = runner.tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": text}]),
                                                    add_generation_prompt=True)
    ids = [int(i) for i in runner.tokenizer.encode(text)]
    try:
        res = runner(ids, args.max_new_tokens)
    except PeerRefused as e:
        print(json.dumps(e.as_dict()))
        return 3
    n = len(res["tokens"])
    print(json.dumps({
        "mode": args.mode, "config": runner.config, "prompt_tokens": len(ids), "new_tokens": n,
        "tokens": res["tokens"], "text": runner.tokenizer.decode(np.asarray(res["tokens"], dtype=np.int32)),
        "seconds": round(res["seconds"], 6), "tokens_per_s": round(n / res["seconds"], 2) if n else 0.0,
        "prefill_seconds": round(res["prefill_seconds"], 6), "stats": res["stats"],
    }))
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
