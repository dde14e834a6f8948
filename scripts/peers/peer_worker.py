#!/usr/bin/env python
"""A peer baseline served from its own virtualenv, speaking JSON lines on stdin/stdout.

Run inside a peer venv made by scripts/peers/setup_peers.sh, e.g.

    .peers/llama/bin/python scripts/peers/peer_worker.py --peer llama_cpp \
        --model ~/.cache/specops/downloads/SmolLM2-135M-Instruct.Q4_1.gguf --mode lookup --k 4
    .peers/openvino/bin/python scripts/peers/peer_worker.py --peer openvino \
        --model .peers/models/smollm2-ov-int4 --mode lookup --k 4 --ngram 3

Peers and modes (greedy decoding throughout: temperature 0 / do_sample False, no penalties):
  llama_cpp  greedy   llama-cpp-python's Llama.generate on the GGUF, n_threads = n_threads_batch = --threads
             lookup   the same with draft_model=LlamaPromptLookupDecoding(max_ngram_size=--ngram,
                      num_pred_tokens=--k)
  openvino   greedy   openvino_genai.LLMPipeline(model, "CPU", INFERENCE_NUM_THREADS=--threads)
             lookup   the same with prompt_lookup=True; GenerationConfig.num_assistant_tokens=--k,
                      max_ngram_size=--ngram
             --ov-f32 adds INFERENCE_PRECISION_HINT=f32, KV_CACHE_PRECISION=f32,
                      DYNAMIC_QUANTIZATION_GROUP_SIZE=0 (lookup output then matches greedy's; slower)

Protocol. After loading the model and one warm-up generation the worker prints one line
    {"ready": true, "peer": ..., "mode": ..., "config": {...}, "versions": {...}}
then answers each request line with one response line until EOF on stdin:
    request   {"prompt": "<text>", "max_new_tokens": N}   or   {"ids": [token ids...], "max_new_tokens": N}
              or (openvino) {"batch": ["<text>", ...], "max_new_tokens": N}: all prompts in one
              generate call -> {"n_tokens": total generated, "total_seconds": float, "texts": [...]};
              each may add "ignore_eos": true (below), and a single prompt
              "constraint": {"json_schema": {...}, "prefix": "", "suffix": ""}: the output is
              prefix + JSON valid against the schema + suffix (the prefix and suffix literal; below)
    response  {"tokens": [...], "text": "...", "n_tokens": int, "prompt_tokens": int,
               "seconds": float, "timing": "...", "ttft_seconds": float, "total_seconds": float}
    error     {"error": "<message>"}
Text prompts are encoded as our engine encodes them: no BOS or other special tokens added, special
tokens written in the text (<|im_start|> ...) parsed as such. Token ids are used as given.
"seconds" is decode time: from the first new token to the last (prefill and the first token
excluded; "timing" says so); "ttft_seconds" is prefill + first token; "total_seconds" is the whole
call. Generation stops at max_new_tokens or at an end-of-sequence token (not included in tokens);
with "ignore_eos": true only at max_new_tokens, end-of-sequence tokens generated and counted like any
other (llama.cpp: its token loop goes on past them; OpenVINO: GenerationConfig.ignore_eos), so that
benchmarks compare equal lengths.

Constraints are each peer's own structured output on the schema: llama.cpp's json_schema_to_gbnf
(LlamaGrammar.from_json_schema, the converter behind its server's `json_schema`) as the grammar of
Llama.generate, the literal prefix and suffix joined to it in GBNF; OpenVINO GenAI's
StructuredOutputConfig(json_schema=...) (xgrammar), or its compound grammar
Concat(ConstString(prefix), JSONSchema(schema), ConstString(suffix)). Each schema's grammar is built
once and kept (as a server caches them); generation then ends where the grammar does (end-of-sequence).

Only library log output may go to stderr: the protocol uses a private copy of the original stdout,
and file descriptor 1 is pointed at stderr so that native code printing to stdout cannot corrupt it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

TIMING = "decode: first new token to last (excludes prefill and the first token)"


# ------------------------------------------------------------------------------ llama.cpp
class LlamaCppPeer:
    def __init__(self, model: str, mode: str, threads: int, k: int, ngram: int, n_ctx: int):
        import llama_cpp
        from llama_cpp import Llama

        draft = None
        self.config = {"model": model, "n_threads": threads, "n_threads_batch": threads, "n_ctx": n_ctx,
                       "temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0}
        if mode == "lookup":
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
            draft = LlamaPromptLookupDecoding(max_ngram_size=ngram, num_pred_tokens=k)
            self.config["draft_model"] = {"LlamaPromptLookupDecoding": {"max_ngram_size": ngram, "num_pred_tokens": k}}
        self.llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, draft_model=draft, verbose=False)
        self.stop = {self.llm.token_eos()}
        eot = getattr(self.llm._model, "token_eot", None)
        if callable(eot) and eot() >= 0:
            self.stop.add(eot())
        self.config["stop_tokens"] = sorted(self.stop)
        self.versions = {"llama_cpp_python": llama_cpp.__version__}
        self.grammars: dict[str, object] = {}  # constraint (JSON text) -> LlamaGrammar

    def grammar(self, constraint: dict | None):
        """The LlamaGrammar of {"json_schema", "prefix", "suffix"} (None: unconstrained)."""
        if constraint is None:
            return None
        key = json.dumps(constraint, sort_keys=True)
        if key not in self.grammars:
            from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

            gbnf = json_schema_to_gbnf(json.dumps(constraint["json_schema"]))
            prefix, suffix = constraint.get("prefix", ""), constraint.get("suffix", "")
            if prefix or suffix:  # the schema's root becomes one rule of a literal-wrapped root
                gbnf = re.sub(r"^root ::=", "json-root ::=", gbnf, count=1, flags=re.M)
                gbnf = f"root ::= {json.dumps(prefix)} json-root {json.dumps(suffix)}\n{gbnf}"
            self.grammars[key] = LlamaGrammar.from_string(gbnf, verbose=False)
        return self.grammars[key]

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate(self, ids: list[int], max_new_tokens: int, ignore_eos: bool = False,
                 constraint: dict | None = None) -> dict:
        grammar = self.grammar(constraint)
        self.llm.reset()  # no KV-cache prefix reuse across requests: every call prefills the whole prompt
        stop = set() if ignore_eos else self.stop  # Llama.generate itself never stops: the loop decides
        out: list[int] = []
        t0 = time.perf_counter()
        t_first = None
        if max_new_tokens > 0:
            for tok in self.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                         reset=True, grammar=grammar):
                if t_first is None:
                    t_first = time.perf_counter()
                if tok in stop:
                    break
                out.append(int(tok))
                if len(out) >= max_new_tokens:
                    break
        t2 = time.perf_counter()
        t_first = t_first or t2
        return {"tokens": out, "ttft_seconds": t_first - t0, "seconds": t2 - t_first, "total_seconds": t2 - t0}


# ------------------------------------------------------------------------------- OpenVINO
class OpenVINOPeer:
    # --ov-f32: f32 compute, f32 KV cache, no dynamic activation quantization. With the CPU plugin's
    # defaults (bf16 compute where the CPU has it, u8 KV cache, int8 dynamic quantization of activations
    # for int4 weights) a multi-token verify pass and a one-token step can disagree, so prompt-lookup
    # output may differ from greedy output.
    F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}

    def __init__(self, model: str, mode: str, threads: int, k: int, ngram: int, n_ctx: int, f32: bool = False):
        import openvino as ov
        import openvino_genai as ov_genai

        self.ov, self.ov_genai = ov, ov_genai
        props = {"INFERENCE_NUM_THREADS": threads, **(self.F32 if f32 else {})}
        self.config = {"model": model, "device": "CPU", "properties": dict(props), "do_sample": False,
                       "apply_chat_template": False}
        kwargs = dict(props)
        if mode == "lookup":
            kwargs["prompt_lookup"] = True
            self.config["prompt_lookup"] = True
        self.pipe = ov_genai.LLMPipeline(model, "CPU", **kwargs)
        self.tokenizer = self.pipe.get_tokenizer()
        self.base = self.pipe.get_generation_config()
        self.mode, self.k, self.ngram = mode, k, ngram
        if mode == "lookup":
            self.config.update(num_assistant_tokens=k, max_ngram_size=ngram)
        eos = self.base.eos_token_id
        if eos is None or eos < 0:
            eos = self.tokenizer.get_eos_token_id()
        self.eos = int(eos)
        self.stop = {int(t) for t in self.base.stop_token_ids if t >= 0} | {self.eos}
        self.config["eos_token_id"], self.config["stop_token_ids"] = self.eos, sorted(self.stop)
        self.versions = {"openvino": ov.__version__, "openvino_genai": ov_genai.__version__}
        self.configs: dict[str, object] = {}  # constraint (JSON text) -> StructuredOutputConfig

    def encode(self, text: str) -> list[int]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return [int(x) for x in enc.input_ids.data.reshape(-1)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def structured(self, constraint: dict):
        """StructuredOutputConfig of {"json_schema", "prefix", "suffix"}."""
        key = json.dumps(constraint, sort_keys=True)
        if key not in self.configs:
            self.configs[key] = self._structured(constraint)
        return self.configs[key]

    def _structured(self, constraint: dict):
        config = self.ov_genai.StructuredOutputConfig
        schema = json.dumps(constraint["json_schema"])
        prefix, suffix = constraint.get("prefix", ""), constraint.get("suffix", "")
        if not (prefix or suffix):
            return config(json_schema=schema)
        return config(compound_grammar=config.Concat(config.ConstString(prefix), config.JSONSchema(schema),
                                                     config.ConstString(suffix)))

    def _gen_config(self, max_new_tokens: int, ignore_eos: bool, constraint: dict | None = None):
        cfg = self.ov_genai.GenerationConfig()
        cfg.max_new_tokens = int(max_new_tokens)
        cfg.ignore_eos = ignore_eos  # its sampler then stops at neither eos_token_id nor stop_token_ids
        cfg.do_sample = False
        cfg.eos_token_id = self.eos
        cfg.stop_token_ids = set(self.stop)
        if hasattr(cfg, "apply_chat_template"):
            cfg.apply_chat_template = False
        if self.mode == "lookup":
            cfg.num_assistant_tokens = self.k
            cfg.max_ngram_size = self.ngram
        if constraint is not None:
            cfg.structured_output_config = self.structured(constraint)
        return cfg

    def generate(self, ids: list[int], max_new_tokens: int, ignore_eos: bool = False,
                 constraint: dict | None = None) -> dict:
        import numpy as np

        ov = self.ov
        input_ids = ov.Tensor(np.asarray([ids], dtype=np.int64))
        mask = ov.Tensor(np.ones((1, len(ids)), dtype=np.int64))
        inputs = self.ov_genai.TokenizedInputs(input_ids, mask)
        cfg = self._gen_config(max_new_tokens, ignore_eos, constraint)
        t0 = time.perf_counter()
        res = self.pipe.generate(inputs, cfg)
        t2 = time.perf_counter()
        tokens = [int(t) for t in res.tokens[0]]
        while tokens and tokens[-1] in self.stop and not ignore_eos:  # a final stop token is not output
            tokens.pop()
        pm = res.perf_metrics
        ttft = pm.get_ttft().mean / 1000.0
        gen = pm.get_generate_duration().mean / 1000.0  # pipeline's own generate time (tokenization excluded)
        out = {"tokens": tokens, "ttft_seconds": ttft, "seconds": max(gen - ttft, 0.0), "total_seconds": t2 - t0,
               "ov_generate_seconds": gen, "ov_tpot_ms": pm.get_tpot().mean}
        if constraint is not None:  # where a constrained call's time goes (its own metrics, ms)
            out.update(ov_grammar_compile_ms=pm.get_grammar_compile_time().mean,
                       ov_sampling_ms=pm.get_sampling_duration().mean)
        return out


    def generate_batch(self, texts: list[str], max_new_tokens: int, ignore_eos: bool = False) -> dict:
        """All prompts in one call: the pipeline schedules them together (continuous batching)."""
        cfg = self._gen_config(max_new_tokens, ignore_eos)
        t0 = time.perf_counter()
        res = self.pipe.generate(texts, cfg)
        seconds = time.perf_counter() - t0
        n = int(res.perf_metrics.get_num_generated_tokens())
        return {"n_tokens": n, "total_seconds": seconds, "texts": list(res.texts)}


PEERS = {"llama_cpp": LlamaCppPeer, "openvino": OpenVINOPeer}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=sorted(PEERS), required=True)
    ap.add_argument("--model", required=True, help="GGUF file (llama_cpp) or OpenVINO IR folder (openvino)")
    ap.add_argument("--mode", choices=["greedy", "lookup"], default="greedy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=4, help="lookup: num_pred_tokens / num_assistant_tokens")
    ap.add_argument("--ngram", type=int, default=3, help="lookup: max_ngram_size")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama_cpp: context size")
    ap.add_argument("--ov-f32", action="store_true", help="openvino: f32 compute and KV cache, no dynamic quantization")
    ap.add_argument("--no-warmup", action="store_true")
    args = ap.parse_args(argv)

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        extra = {"f32": True} if args.ov_f32 else {}
        if extra and args.peer != "openvino":
            raise ValueError("--ov-f32 is for --peer openvino")
        peer = PEERS[args.peer](args.model, args.mode, args.threads, args.k, args.ngram, args.n_ctx, **extra)
        if not args.no_warmup:
            peer.generate(peer.encode("<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n"), 16)
    except Exception as e:  # report a load failure on the protocol, then exit
        send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return 3
    send({"ready": True, "peer": args.peer, "mode": args.mode, "config": peer.config, "versions": peer.versions,
          "timing": TIMING})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            budget, ignore_eos = int(req.get("max_new_tokens", 64)), bool(req.get("ignore_eos", False))
            if "batch" in req:  # openvino: {"batch": [texts], "max_new_tokens": N}
                send(peer.generate_batch(req["batch"], budget, ignore_eos))
                continue
            if "ids" in req:
                ids = [int(i) for i in req["ids"]]
            else:
                ids = peer.encode(req["prompt"])
            out = peer.generate(ids, budget, ignore_eos, **({"constraint": req["constraint"]}
                                                            if "constraint" in req else {}))
            out.update(n_tokens=len(out["tokens"]), prompt_tokens=len(ids), text=peer.decode(out["tokens"]),
                       timing=TIMING)
            send(out)
        except Exception as e:
            send({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
