"""Training loops for the default pair (torch, CPU, bf16 autocast, fused linear cross-entropy)."""
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


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, computed by row chunks.

    A 32064-row vocabulary makes the [tokens, vocab] logits the largest tensor of a step; this
    never keeps them: each chunk's logits (bf16 matmul, fp32 softmax) give that chunk's loss and
    its gradients at once, in the forward pass (the approach of Liger-Kernel's fused linear CE).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
        n = hidden.shape[0]
        h16, w16 = hidden.to(torch.bfloat16), weight.to(torch.bfloat16)
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float32)
        for s in range(0, n, chunk):
            h, y = h16[s:s + chunk], targets[s:s + chunk]
            logits = (h @ w16.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None])[:, 0]).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(len(y)), y] -= 1.0  # d(loss)/d(logits), unscaled
            g = probs.to(torch.bfloat16)
            grad_hidden[s:s + chunk] = g @ w16
            grad_weight += g.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n, ctx.dtypes = n, (hidden.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return (grad_hidden * scale).to(ctx.dtypes[0]), (grad_weight * scale).to(ctx.dtypes[1]), None, None


def lm_loss(model: LlamaForCausalLM, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Next-token loss of a [B, T] batch (the same as `model(x, labels=x).loss`)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1]).float()
    return FusedLinearCrossEntropy.apply(hidden, model.lm_head.weight, x[:, 1:].reshape(-1), chunk)


def grow_depth(model: LlamaForCausalLM, layers: int) -> LlamaForCausalLM:
    """A deeper model computing the same function (LLaMA Pro's block expansion): each layer is
    followed by a copy of itself whose attention output and MLP down projections are zero, so
    the copy adds nothing to the residual stream until training moves those projections."""
    cfg = model.config
    if layers % cfg.num_hidden_layers:
        raise ValueError(f"cannot grow {cfg.num_hidden_layers} layers to {layers}")
    factor = layers // cfg.num_hidden_layers
    grown = LlamaForCausalLM(type(cfg)(**{**cfg.to_dict(), "num_hidden_layers": layers}))
    state = {k: v for k, v in model.state_dict().items() if ".layers." not in k}
    for i, layer in enumerate(model.model.layers):
        for j in range(factor):
            for name, value in layer.state_dict().items():
                twin = j > 0 and name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                state[f"model.layers.{i * factor + j}.{name}"] = torch.zeros_like(value) if twin else value.clone()
    grown.load_state_dict(state, strict=False)  # lm_head is tied to the embedding
    grown.tie_weights()
    return grown


def _windows(data: np.ndarray, rng: np.random.Generator, batch: int, seq: int) -> torch.Tensor:
    starts = rng.integers(0, len(data) - seq - 1, size=batch)
    return torch.from_numpy(np.stack([data[s:s + seq] for s in starts]).astype(np.int64))


def train_lm(model: LlamaForCausalLM, sample_batch, steps: int, lr: float, seed: int,
             log=print, label: str = "", loss_fn=lm_loss) -> list[float]:
    """AdamW, linear warm-up then cosine decay. `sample_batch(rng)` -> LongTensor [B, T] (or
    whatever `loss_fn(model, batch)` takes)."""
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
        loss = loss_fn(model, sample_batch(rng))
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
