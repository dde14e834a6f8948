"""Random-weight models in the production formats and shapes, for measuring pass costs only.

`specops profile --target <folder>` on these tells what a verify pass over k + 1 tokens costs
Phi-3-mini int4 and TinyLlama int4 on a machine without downloading either. Recipe:

1. a 2-layer model of the full width (transformers, random weights, seed 0), with the committed
   small pair's tokenizer of the same vocabulary (the builder wants one);
2. onnxruntime-genai's builder, int4 MatMulNBits block 32 accuracy level 4, GroupQueryAttention,
   fp32 KV cache: the production export's operators and layout;
3. the graph's second layer repeated up to the full depth. The copies share the second layer's
   initializers (the file stays small), but each MatMulNBits node prepacks its own copy at load,
   so a pass reads as many weight bytes as the real model's.

With `materialize=True` (scripts/build_shape_models.py --materialize) every layer gets its own
weights (specops_build.materialize): full-size folders for memory rehearsals (Phi-3-mini int4
about 2.7 GB). `build_optimum_draft` writes TinyLlama int4 in the Optimum layout production
uses for the draft (position_ids, past_key_values.%d.*, MatMulNBits from onnxruntime's quantizer,
int4 embedding: about 0.7 GB): a 2-layer random checkpoint whose later layers all reference
layer 1's modules, exported by specops_build.export_draft (torch keeps one copy of a shared
weight), quantized, then materialized.

Logits are noise: never serve these.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # "phi3" or "llama"
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    context: int
    tokenizer_from: Path  # a committed folder with a tokenizer of this vocabulary


SHAPES = {
    "phi3-mini-int4": Shape("phi3-mini-int4", "phi3", 32064, 3072, 8192, 32, 32, 32, 4096, ROOT / "models" / "target"),
    "tinyllama-int4": Shape("tinyllama-int4", "llama", 32000, 2048, 5632, 22, 32, 4, 2048, ROOT / "models" / "draft"),
}


def write_hf(shape: Shape, out: Path, layers: int = 2) -> None:
    """A random-weight transformers checkpoint of the shape's width and `layers` layers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                  num_hidden_layers=layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                  max_position_embeddings=shape.context, rope_theta=10000.0, bos_token_id=1,
                  tie_word_embeddings=False)
    if shape.family == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**common, original_max_position_embeddings=shape.context,
                                           eos_token_id=32000, pad_token_id=32000))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, eos_token_id=2))
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (shape.tokenizer_from / name).exists():
            shutil.copy(shape.tokenizer_from / name, out / name)


def run_builder(hf: Path, out: Path, cache: Path) -> None:
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
           "-e", "cpu", "-c", str(cache), "--extra_options", "block_size=32", "accuracy_level=4"]
    # GIT_DIR: the builder stamps producer_version with the enclosing checkout's HEAD otherwise
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "GIT_DIR": "/dev/null"})


def _renamer(j: int):
    """Tensor and node names of layer 1 -> those of layer j (layer 0 references -> layer j - 1).
    Initializers ('model.layers.1.*', no leading slash) keep their names: the copies share them."""
    table = {"/model/layers.1/": f"/model/layers.{j}/", "/model/layers.0/": f"/model/layers.{j - 1}/",
             "past_key_values.1.": f"past_key_values.{j}.", "present.1.": f"present.{j}."}
    pattern = re.compile("|".join(re.escape(k) for k in table))
    return lambda s: pattern.sub(lambda m: table[m.group(0)], s)


def repeat_layers(model_file: Path, depth: int) -> None:
    """Rewrite a 2-layer builder graph in place with layer 1 repeated up to `depth` layers."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    layer1 = [n for n in graph.node if n.name.startswith("/model/layers.1/")]
    tail_at = max(i for i, n in enumerate(graph.node) if n.name.startswith("/model/layers.1/")) + 1
    tail = list(graph.node[tail_at:])  # final norm and lm_head
    if not layer1 or not tail:
        raise ValueError(f"{model_file}: not a 2-layer builder graph")
    copies = []
    for j in range(2, depth):
        rename = _renamer(j)
        for node in layer1:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            new.name = rename(node.name)
            new.input[:] = [rename(x) for x in node.input]
            new.output[:] = [rename(x) for x in node.output]
            copies.append(new)
    for node in tail:  # the final norm reads the last layer's outputs
        node.input[:] = [x.replace("/model/layers.1/", f"/model/layers.{depth - 1}/") if "/model/layers.1/" in x
                         else x for x in node.input]
    del graph.node[tail_at:]
    graph.node.extend(copies + tail)
    for io in (graph.input, graph.output):
        ones = [v for v in io if re.fullmatch(r"(past_key_values|present)\.1\.(key|value)", v.name)]
        for j in range(2, depth):
            for v in ones:
                new = onnx.ValueInfoProto()
                new.CopyFrom(v)
                new.name = _renamer(j)(v.name)
                io.append(new)
    onnx.save(model, str(model_file))


def build(shape: Shape, out: Path, work: Path, log=print, materialize: bool = False) -> Path:
    """Build the shape model into `out` (replaced if present); returns the folder.
    `materialize`: every layer with its own weights (full size on disk)."""
    work.mkdir(parents=True, exist_ok=True)
    hf, two = work / f"{shape.name}-hf", work / f"{shape.name}-2l"
    shutil.rmtree(two, ignore_errors=True)
    log(f"{shape.name}: random 2-layer checkpoint (hidden {shape.hidden}, vocab {shape.vocab})")
    write_hf(shape, hf)
    log(f"{shape.name}: onnxruntime-genai builder, int4 block 32, accuracy level 4")
    run_builder(hf, two, work / "builder_cache")
    shutil.rmtree(hf, ignore_errors=True)
    log(f"{shape.name}: layer 1 repeated to {shape.layers} layers")
    repeat_layers(two / "model.onnx", shape.layers)
    if materialize:
        from .materialize import materialize as own_weights

        own_weights(two / "model.onnx", "model.onnx.data", log=lambda msg: log(f"{shape.name}: {msg}"))
    cfg_path = two / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["num_hidden_layers"] = shape.layers
    cfg["model"]["shape_model"] = ("random weights, every layer its own: for timing and memory only" if materialize
                                   else "random weights, layers repeated: for timing only") + \
        " (specops_build.shape_models)"
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(two), str(out))
    return out


def build_optimum_draft(shape: Shape, out: Path, work: Path, log=print) -> Path:
    """TinyLlama-shaped int4 draft in the Optimum layout, every layer its own weights, into `out`."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM

    from .export_draft import ExplicitCacheLlama, export_optimum_style, quantize_int4
    from .materialize import materialize

    work.mkdir(parents=True, exist_ok=True)
    hf, onnx_dir = work / f"{shape.name}-hf", work / f"{shape.name}-optimum"
    shutil.rmtree(onnx_dir, ignore_errors=True)
    onnx_dir.mkdir(parents=True)
    log(f"{shape.name}: random 2-layer checkpoint, layers 2..{shape.layers - 1} referencing layer 1")
    write_hf(shape, hf)
    model = LlamaForCausalLM.from_pretrained(hf).eval()
    first, second = model.model.layers
    model.model.layers = nn.ModuleList([first] + [second] * (shape.layers - 1))
    model.config.num_hidden_layers = shape.layers

    wrapper = ExplicitCacheLlama(model)
    for i in range(2, shape.layers):  # its fused qkv / gate_up are shared too (one copy in the export)
        wrapper.qkv[i], wrapper.gate_up[i] = wrapper.qkv[1], wrapper.gate_up[1]
    log(f"{shape.name}: Optimum-layout export (torch.onnx), int4 quantization, own weights per layer")
    with torch.no_grad():
        export_optimum_style(model, onnx_dir / "model_fp32.onnx", wrapper)
    quantize_int4(onnx_dir / "model_fp32.onnx", onnx_dir / "model.onnx")
    materialize(onnx_dir / "model.onnx", "model.onnx_data", log=lambda msg: log(f"{shape.name}: {msg}"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("model.onnx", "model.onnx_data"):
        shutil.move(str(onnx_dir / name), str(out / name))
    cfg = model.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["shape_model"] = "random weights, every layer its own: for timing and memory only (specops_build.shape_models)"
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    for name in TOKENIZER_FILES:
        if (shape.tokenizer_from / name).exists():
            shutil.copy(shape.tokenizer_from / name, out / name)
    shutil.rmtree(hf, ignore_errors=True)
    shutil.rmtree(onnx_dir, ignore_errors=True)
    return out

