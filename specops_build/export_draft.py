"""Export a Llama checkpoint in the Optimum layout TinyLlama ONNX exports use.

Inputs: input_ids [b, s], attention_mask [b, past + s], position_ids [b, s],
past_key_values.%d.key/value [b, kv_heads, past, head_dim]; outputs: logits [b, s, vocab],
present.%d.key/value [b, kv_heads, past + s, head_dim]; b = 1. Then 4-bit weight-only
quantization with onnxruntime's own MatMulNBits quantizer (MatMul and Gather).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn


class ExplicitCacheLlama(nn.Module):
    """HF LlamaForCausalLM forward with the KV cache as explicit tensors (traceable).

    Same maths as the HF model; the graph is kept small because a draft pass is
    dominated by per-operator overhead: q/k/v and gate/up are each one fused MatMul,
    rotary cos/sin come from a table gathered once, grouped KV heads are expanded
    with a broadcast instead of a copy per head.
    """

    def __init__(self, hf):
        super().__init__()
        cfg = hf.config
        self.hf = hf
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.inter = cfg.intermediate_size
        theta = cfg.rope_parameters["rope_theta"]
        inv = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.arange(cfg.max_position_embeddings).float()[:, None] * inv  # [P, d/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos_table", emb.cos(), persistent=False)  # [P, d]
        self.register_buffer("sin_table", emb.sin(), persistent=False)
        half = self.head_dim // 2
        rot = torch.zeros(self.head_dim, self.head_dim)
        rot[half:, :half] = -torch.eye(half)  # output[:half] = -x[half:]
        rot[:half, half:] = torch.eye(half)   # output[half:] = x[:half]
        self.register_buffer("rotate_half", rot, persistent=False)
        self.qkv = nn.ModuleList()
        self.gate_up = nn.ModuleList()
        for layer in hf.model.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = nn.Linear(cfg.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=False)
            qkv.weight.data = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
            gu = nn.Linear(cfg.hidden_size, 2 * self.inter, bias=False)
            gu.weight.data = torch.cat([m.gate_proj.weight, m.up_proj.weight]).detach()
            self.qkv.append(qkv)
            self.gate_up.append(gu)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        """Shapes are written with one -1 each and batch 1, so that the graph needs no Shape
        arithmetic per layer; the mask is built from attention_mask and position_ids only."""
        h_, kv, d, rep = self.heads, self.kv_heads, self.head_dim, self.heads // self.kv_heads
        model = self.hf.model
        x = model.embed_tokens(input_ids)  # [1, s, hidden]
        cos = F.embedding(position_ids, self.cos_table)[:, None]  # [1, 1, s, d]
        sin = F.embedding(position_ids, self.sin_table)[:, None]
        # key slot j (cached or new) is visible to query i if it is live (mask 1) and its
        # position (live slots before it) is <= the query's position: holes left by a
        # rewind stay invisible, and new keys after the query are causal-masked.
        live = attention_mask  # [1, T]: past slots and the new tokens
        key_pos = torch.cumsum(live, dim=1) - 1  # [1, T]
        allowed = (key_pos[:, None, :] <= position_ids[:, :, None]) & (live[:, None, :] > 0)  # [1, s, T]
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]  # [1, 1, s, T]
        bias = bias.repeat(1, 1, rep, 1)  # rows ordered (rep, s), as the grouped queries below
        rot = self.rotate_half  # [d, d]: x @ rot = cat(-x2, x1)
        presents = []
        for i, layer in enumerate(model.layers):
            qkv = self.qkv[i](layer.input_layernorm(x)).view(1, -1, h_ + 2 * kv, d).transpose(1, 2)
            qk, v = qkv.split([h_ + kv, kv], dim=1)  # [1, h + kv, s, d], [1, kv, s, d]
            qk = qk * cos + (qk @ rot) * sin  # rotary on queries and keys at once
            q, k = qk.split([h_, kv], dim=1)
            k = torch.cat([past[2 * i], k], dim=2)  # [1, kv, T, d]
            v = torch.cat([past[2 * i + 1], v], dim=2)
            presents += [k, v]
            qg = q.reshape(1, kv, -1, d)  # grouped-query attention: [1, kv, rep * s, d]
            scores = (qg @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d)) + bias
            o = (F.softmax(scores, dim=-1) @ v).reshape(1, h_, -1, d)  # [1, h, s, d]
            x = x + layer.self_attn.o_proj(o.transpose(1, 2).reshape(1, -1, h_ * d))
            gate, up = self.gate_up[i](layer.post_attention_layernorm(x)).split([self.inter, self.inter], dim=-1)
            x = x + layer.mlp.down_proj(F.silu(gate) * up)
        logits = self.hf.lm_head(model.norm(x))
        return (logits, *presents)


def export_optimum_style(hf, path: Path, wrapper: nn.Module | None = None) -> None:
    """fp32 ONNX export of `hf` (a LlamaForCausalLM) to `path`; `wrapper`: an ExplicitCacheLlama
    of it built elsewhere (the shape models share one layer's modules across layers)."""
    cfg = hf.config
    wrapper = (wrapper or ExplicitCacheLlama(hf)).eval()
    layers, kv, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, wrapper.head_dim
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    ids = torch.ones(1, 3, dtype=torch.int64)
    past = [torch.zeros(1, kv, 2, hd) for _ in past_names]
    # batch is 1 (SpecOps decodes one sequence at a time): fixing it removes shape arithmetic
    dyn = {"input_ids": {1: "sequence_length"}, "attention_mask": {1: "total_sequence_length"},
           "position_ids": {1: "sequence_length"}, "logits": {1: "sequence_length"}}
    for name in past_names:
        dyn[name] = {2: "past_sequence_length"}
    for name in present_names:
        dyn[name] = {2: "total_sequence_length"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (ids, torch.ones(1, 5, dtype=torch.int64), torch.arange(2, 5)[None], *past),
            str(path), dynamo=False, opset_version=20, do_constant_folding=True,
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names], dynamic_axes=dyn,
        )


def quantize_int4(src: Path, dst: Path, block_size: int = 32, bits: int = 4) -> None:
    """Weight-only int4 (or int8: bits=8) (MatMul -> MatMulNBits, Gather -> GatherBlockQuantized)."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

    quant = MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4,
        op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",),  # its Gather: 4 bits only
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    quant.process()
    onnx.save_model(quant.model.model, str(dst))


def max_logit_error(hf, onnx_path: Path) -> float:
    """Compare the ONNX export with the torch model: prefill, then a 2-token append on the past."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cfg = hf.config
    kv, hd = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, size=(1, 12))
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids)).logits.numpy()
    feeds = {"input_ids": ids[:, :10], "attention_mask": np.ones((1, 10), np.int64),
             "position_ids": np.arange(10)[None]}
    for i in range(cfg.num_hidden_layers):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, kv, 0, hd), np.float32)
    out = sess.run(None, feeds)
    feeds2 = {"input_ids": ids[:, 10:], "attention_mask": np.ones((1, 12), np.int64),
              "position_ids": np.arange(10, 12)[None]}
    for j, name in enumerate(o.name for o in sess.get_outputs()[1:]):
        feeds2[name.replace("present", "past_key_values")] = out[1 + j]
    out2 = sess.run(None, feeds2)
    got = np.concatenate([out[0], out2[0]], axis=1)
    return float(np.abs(got - ref).max())
