"""Training loops for the default pair (torch, CPU, bf16 autocast)."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_model(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int,
               intermediate: int, context: int, seed: int, **special) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=intermediate, max_position_embeddings=context,
        tie_word_embeddings=True, rope_theta=10000.0, **special,
    )
    return LlamaForCausalLM(cfg)


def _windows(data: np.ndarray, rng: np.random.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([data[s:s + seq] for s in starts]).astype(np.int64))


def train_lm(model: LlamaForCausalLM, sample_batch, steps: int, lr: float, seed: int,
             log=print, label: str = "") -> list[float]:
    """AdamW, linear warm-up then cosine decay. `sample_batch(rng)` -> LongTensor [B, T]."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    warmup = max(1, steps // 20)
    losses: list[float] = []
    model.train()
    start = time.time()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        x = sample_batch(rng)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log(f"{label} step {step + 1}/{steps} loss {np.mean(losses[-50:]):.3f} ({time.time() - start:.0f}s)")
    model.eval()
    return losses


def window_sampler(data: np.ndarray, batch: int, seq: int):
    return lambda rng: _windows(data, rng, batch, seq)


def rows_sampler(rows: np.ndarray, batch: int):
    """Batches of whole rows (distillation sequences of equal length)."""
    return lambda rng: torch.from_numpy(rows[rng.integers(0, len(rows), size=batch)].astype(np.int64))


@torch.no_grad()
def greedy_continuations(model: LlamaForCausalLM, prompts: np.ndarray, new_tokens: int,
                         batch: int, log=print) -> np.ndarray:
    """Sequence-level distillation data: the target's own greedy continuations.

    prompts: [N, P] int array of equal-length prompts -> [N, P + new_tokens].
    """
    out = []
    start = time.time()
    for i in range(0, len(prompts), batch):
        x = torch.from_numpy(prompts[i:i + batch].astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        out.append(y.numpy())
        log(f"distill: {i + len(x)}/{len(prompts)} sequences ({time.time() - start:.0f}s)")
    return np.concatenate(out)
