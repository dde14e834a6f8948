"""Stages of the default-pair build. Each stage reads and writes files in a work folder."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM

from . import tokenizer as tk
from .config import BuildPlan
from .corpus import chat_examples, copy_examples, load_corpus
from .export_draft import export_optimum_style, max_logit_error, quantize_int4
from .train import greedy_continuations, grow_depth, make_model, rows_sampler, train_lm, window_sampler

PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
ZEPHYR_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def bridge_ids(ids, target_tok: Tokenizer, draft_tok: Tokenizer) -> list[int]:
    """Target ids -> draft ids: shared ids pass through, target-only ids become their text."""
    out: list[int] = []
    for i in ids:
        if i < tk.BASE_VOCAB:
            out.append(int(i))
        else:
            out.extend(draft_tok.encode(target_tok.id_to_token(int(i)), add_special_tokens=False).ids)
    return out


def stage_tokenizers(work: Path, log) -> None:
    corpus = load_corpus()
    base = tk.train_base(corpus.train)
    base.save(str(work / "draft_tokenizer.json"))
    tk.with_chat_tokens(base).save(str(work / "target_tokenizer.json"))
    log(f"tokenizers: base vocab {base.get_vocab_size()}, target {tk.BASE_VOCAB + len(tk.TARGET_ADDED)} used")


def _chat_text(question: str, answer: str) -> str:
    return f"<|user|>\n{question}<|end|>\n<|assistant|>\n{answer}<|end|>\n"


def target_stream(work: Path, plan: BuildPlan) -> np.ndarray:
    """Training tokens: corpus documents, chat examples and repetitions, each closed by <|endoftext|>."""
    tok = Tokenizer.from_file(str(work / "target_tokenizer.json"))
    corpus = load_corpus()
    chats = [_chat_text(q, a) for q, a in chat_examples(corpus.topics, plan.seed)]
    docs = corpus.train + chats * 3 + copy_examples(corpus.train, plan.seed + 4, plan.copy_examples)
    random.Random(plan.seed).shuffle(docs)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(tk.ENDOFTEXT)
    return np.asarray(ids, dtype=np.int32)


def stage_target_train(work: Path, plan: BuildPlan, log) -> None:
    data = target_stream(work, plan)
    log(f"target: {len(data)} training tokens")
    s = plan.target
    sampler = window_sampler(data, plan.target_batch, plan.seq)
    model = make_model(tk.TARGET_ROWS, s.hidden, plan.target_grow_from, s.heads, s.kv_heads, s.intermediate,
                       plan.context, plan.seed, bos_token_id=tk.BOS, eos_token_id=tk.END)
    log(f"target: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {plan.target_grow_from} layers")
    losses = train_lm(model, sampler, plan.target_steps, plan.target_lr, plan.seed, log, "target")
    model = grow_depth(model, s.layers)
    log(f"target: grown to {s.layers} layers, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    losses += train_lm(model, sampler, plan.target_grow_steps, plan.target_grow_lr, plan.seed + 9, log,
                       "target (grown)")
    model.save_pretrained(work / "target_hf")
    steps = plan.target_steps + plan.target_grow_steps
    _write_json(work / "target_losses.json", {"tokens_seen": steps * plan.target_batch * plan.seq,
                                              "corpus_tokens": int(len(data)), "losses": losses})


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _target_tokenizer_files(folder: Path, work: Path) -> None:
    shutil.copy(work / "target_tokenizer.json", folder / "tokenizer.json")
    added = {t: tk.BASE_VOCAB + i for i, t in enumerate(tk.TARGET_ADDED)}
    _write_json(folder / "added_tokens.json", added)
    _write_json(folder / "special_tokens_map.json", {
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"})
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
        "pad_token": "<|endoftext|>", "model_max_length": 2048, "chat_template": PHI3_CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for t, i in added.items()},
    })


def stage_target_export(work: Path, out: Path, log) -> None:
    """onnxruntime-genai's model builder, int4 for CPU: the Phi-3 production format."""
    hf_dir = work / "target_hf"
    _target_tokenizer_files(hf_dir, work)
    build_dir = work / "target_onnx"
    shutil.rmtree(build_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(build_dir),
           "-p", "int4", "-e", "cpu", "-c", str(work / "builder_cache"), "--extra_options",
           "filename=specops-target-cpu-int4-rtn-block-32-acc-level-4.onnx", "shared_embeddings=true",
           "op_types_to_quantize=MatMul/Gather", "block_size=32", "accuracy_level=4"]
    subprocess.run(cmd, check=True, capture_output=True)
    cfg_path = build_dir / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["eos_token_id"] = [tk.ENDOFTEXT, tk.ASSISTANT, tk.END]  # as Phi-3's genai_config
    cfg["model"]["pad_token_id"] = tk.ENDOFTEXT
    _write_json(cfg_path, cfg)
    _target_tokenizer_files(build_dir, work)
    shutil.copy(hf_dir / "config.json", build_dir / "config.json")
    dest = out / "target"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(build_dir, dest)
    log(f"target: exported to {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.1f} MB)")


def draft_streams(work: Path, plan: BuildPlan) -> np.ndarray:
    """Corpus tokens for the draft, documents closed by </s> (the draft's own EOS)."""
    tok = Tokenizer.from_file(str(work / "draft_tokenizer.json"))
    docs = list(load_corpus().train)
    random.Random(plan.seed + 1).shuffle(docs)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(tk.EOS_DRAFT)
    return np.asarray(ids, dtype=np.int32)


def distill_prompts(work: Path, plan: BuildPlan) -> np.ndarray:
    """Equal-length target-token prompts: corpus windows and chat openings."""
    rng = np.random.default_rng(plan.seed + 2)
    tok = Tokenizer.from_file(str(work / "target_tokenizer.json"))
    stream = target_stream(work, plan)
    n_chat = plan.distill_prompts // 4
    starts = rng.integers(0, len(stream) - plan.distill_prompt_len, size=plan.distill_prompts - n_chat)
    rows = [stream[s:s + plan.distill_prompt_len] for s in starts]
    corpus = load_corpus()
    pairs = chat_examples(corpus.topics, plan.seed + 3)
    for q, a in pairs[:n_chat] if len(pairs) >= n_chat else (pairs * n_chat)[:n_chat]:
        ids = tok.encode(f"<|user|>\n{q}<|end|>\n<|assistant|>\n{a}", add_special_tokens=False).ids
        ids = (ids + [tk.ENDOFTEXT] * plan.distill_prompt_len)
        cut = rng.integers(len(tok.encode(f"<|user|>\n{q}<|end|>\n<|assistant|>\n").ids), max(len(ids) - plan.distill_prompt_len, 1) + 1)
        window = ids[max(0, cut - plan.distill_prompt_len):cut]
        rows.append(np.asarray(([tk.ENDOFTEXT] * plan.distill_prompt_len + window)[-plan.distill_prompt_len:]))
    return np.stack(rows).astype(np.int64)


def stage_distill_data(work: Path, plan: BuildPlan, log) -> None:
    torch.manual_seed(plan.seed)
    target = LlamaForCausalLM.from_pretrained(work / "target_hf").eval()
    seqs = greedy_continuations(target, distill_prompts(work, plan), plan.distill_new_tokens,
                                plan.distill_batch, log)
    target_tok = Tokenizer.from_file(str(work / "target_tokenizer.json"))
    draft_tok = Tokenizer.from_file(str(work / "draft_tokenizer.json"))
    width = plan.distill_prompt_len + plan.distill_new_tokens
    rows = []
    for seq in seqs:
        bridged = bridge_ids(seq, target_tok, draft_tok)
        rows.append((bridged + [tk.EOS_DRAFT] * width)[:width])
    np.save(work / "distill_rows.npy", np.asarray(rows, dtype=np.int32))
    log(f"distill: {len(rows)} sequences of {width} draft tokens")


def stage_draft_train(work: Path, plan: BuildPlan, log) -> None:
    s = plan.draft
    model = make_model(tk.BASE_VOCAB, s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate,
                       plan.context, plan.seed + 5, bos_token_id=tk.BOS, eos_token_id=tk.EOS_DRAFT)
    log(f"draft: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    corpus = draft_streams(work, plan)
    train_lm(model, window_sampler(corpus, plan.draft_batch, plan.seq), plan.draft_pretrain_steps,
             plan.draft_lr, plan.seed + 6, log, "draft pretrain")
    rows = np.load(work / "distill_rows.npy")
    train_lm(model, rows_sampler(rows, plan.draft_batch * 2), plan.draft_distill_steps,
             plan.draft_lr / 2, plan.seed + 7, log, "draft distill")
    model.save_pretrained(work / "draft_hf")


def stage_draft_export(work: Path, out: Path, log) -> None:
    model = LlamaForCausalLM.from_pretrained(work / "draft_hf").eval()
    build_dir = work / "draft_onnx"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir()
    fp32 = build_dir / "model_fp32.onnx"
    export_optimum_style(model, fp32)
    log(f"draft: fp32 export max |logit error| vs torch {max_logit_error(model, fp32):.2e}")
    dest = out / "draft"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    quantize_int4(fp32, dest / "model.onnx")
    cfg = model.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    _write_json(dest / "config.json", cfg)
    _write_json(dest / "generation_config.json", {"bos_token_id": tk.BOS, "eos_token_id": tk.EOS_DRAFT,
                                                  "max_length": 2048, "pad_token_id": tk.EOS_DRAFT})
    shutil.copy(work / "draft_tokenizer.json", dest / "tokenizer.json")
    _write_json(dest / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    _write_json(dest / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 2048, "chat_template": ZEPHYR_CHAT_TEMPLATE})
    log(f"draft: exported to {dest} ({sum(f.stat().st_size for f in dest.iterdir()) / 1e6:.1f} MB)")
