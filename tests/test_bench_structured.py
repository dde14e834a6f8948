"""The structured benchmark's peer comparison (specops/bench/structured.py): what each peer is given,
how its outputs are checked, and how constrained peers enter the interleaved run. The last tests run
the real peers (llama.cpp, OpenVINO GenAI) when their virtualenvs exist (scripts/peers/setup_peers.sh)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specops.bench import run_interleaved
from specops.bench.measure import PeerOutput, load_prompt_items
from specops.bench.structured import _valid_wrapped, constrained_peer_rows, peer_constraint, peer_time_ratios

ROOT = Path(__file__).resolve().parents[1]
ITEMS = load_prompt_items("structured")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"],
    "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {"name": "search_web", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


def _tool_item(choice) -> dict:
    return {"kind": "chat", "task": "tools", "prompt": "Weather in Paris?", "tools": [WEATHER, SEARCH],
            "tool_choice": choice}


def test_a_schema_prompt_gives_the_peers_its_schema():
    item = next(i for i in ITEMS if i["task"] == "json_schema")
    assert peer_constraint(item) == {"json_schema": item["schema"]}


def test_a_tool_prompt_gives_the_peers_the_schema_of_one_call_between_its_tags():
    required = peer_constraint(_tool_item("required"))
    assert (required["prefix"], required["suffix"]) == ("<tool_call>\n", "\n</tool_call>")
    assert [o["properties"]["name"] for o in required["json_schema"]["anyOf"]] == [
        {"const": "get_weather"}, {"const": "search_web"}]
    assert "x-guidance" not in required["json_schema"]  # llguidance's own options stay ours
    named = peer_constraint(_tool_item({"type": "function", "function": {"name": "search_web"}}))
    assert [o["properties"]["name"] for o in named["json_schema"]["anyOf"]] == [{"const": "search_web"}]
    with pytest.raises(ValueError, match="auto"):
        peer_constraint(_tool_item("auto"))  # text or a call: no single schema to give


def test_every_committed_structured_prompt_has_a_peer_constraint():
    constraints = [peer_constraint(item) for item in ITEMS]
    assert sum("prefix" in c for c in constraints) == sum(item["task"] == "tools" for item in ITEMS) > 0


def test_peer_outputs_are_checked_against_the_schema_whatever_their_whitespace():
    call = peer_constraint(_tool_item("required"))
    assert _valid_wrapped('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>', call)
    assert _valid_wrapped('<tool_call>\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n</tool_call>',
                          call)
    assert not _valid_wrapped('<tool_call>\n{"name":"get_time","arguments":{"city":"Paris"}}\n</tool_call>', call)
    assert not _valid_wrapped('<tool_call>\n{"name":"get_weather","arguments":{"town":"Paris"}}\n</tool_call>', call)
    assert not _valid_wrapped('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}', call)
    schema = {"json_schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    assert _valid_wrapped('{ "n": 3 }\n', schema) and not _valid_wrapped('{"n": "3"}', schema)


def test_constrained_peers_run_each_prompt_under_its_constraint_inside_the_loop(engine):
    calls = []
    constraints = [{"json_schema": {"type": "integer"}}, {"json_schema": {"type": "string"}}]

    def peer(ids, max_new_tokens, constraint):  # answers 4 tokens in 0.1 s; the string prompt fails once
        calls.append((len(ids), constraint))
        if constraint["json_schema"]["type"] == "string" and len(calls) == 2:
            return PeerOutput(0, 0.0, "", error="refused")
        return PeerOutput(4, 0.1, "12" if constraint["json_schema"]["type"] == "integer" else '"x"')

    prompts = [engine.tokenizer.encode("import os\n"), engine.tokenizer.encode("class A:\n")]
    run = run_interleaved(engine, prompts, ["none"], 2, 6, 4, peers={"p": peer}, peer_constraints=constraints)
    assert calls == [(len(prompts[i % 2]), constraints[i % 2]) for i in range(4)]
    checks = [lambda t: t == "12", lambda t: t == '"x"']
    row = constrained_peer_rows(run, checks)["p"]
    assert row["tok_s"] == 40.0 and row["s_per_output"] == 0.1
    assert (row["valid"], row["errors"], row["first_error"]) == (0.75, 1, "refused")  # an error is invalid
    ours = sorted(0.1 / r.stats.total_s for i, runs in enumerate(run.results["none"]) for j, r in enumerate(runs)
                  if (i, j) != (1, 0))  # the failed run is left out of the ratio
    assert peer_time_ratios(run, {"none": ["p"]}) == {"none_vs_p": round(ours[1], 3)}


# ------------------------------------------------------------------ the real peers, when installed
PEERS_DIR = Path(os.environ.get("SPECOPS_PEERS_DIR", ROOT / ".peers"))
GGUF = Path(os.environ.get("SMOLLM2_GGUF", Path(os.environ.get("SPECOPS_MODEL_CACHE_DIR", Path.home() / ".cache/specops"))
                           / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _peer_missing(name: str) -> str | None:
    venv = PEERS_DIR / name / "bin" / "python"
    package = {"llama": "llama_cpp", "openvino": "openvino_genai"}[name]
    if not venv.exists() or subprocess.run([str(venv), "-c", f"import {package}"], capture_output=True).returncode:
        return f"{package} not importable in {venv} (scripts/peers/setup_peers.sh)"
    model = GGUF if name == "llama" else PEERS_DIR / "models" / "smollm2-ov-int4"
    return None if model.exists() else f"{model} not found"


@pytest.mark.parametrize("venv, peer", [("llama", "llama_cpp"), ("openvino", "openvino")])
def test_a_real_peer_answers_a_schema_and_a_tool_call_in_shape_under_its_own_structured_output(venv, peer):
    if reason := _peer_missing(venv):
        pytest.skip(reason)
    sys.path.insert(0, str(ROOT / "scripts"))
    from peers.subprocess_peer import chatml, llama_cpp_peer, openvino_peer

    make = {"llama_cpp": llama_cpp_peer, "openvino": openvino_peer}[peer]
    schema_item = next(i for i in ITEMS if i["task"] == "json_schema")
    tool_item = next(i for i in ITEMS if i["task"] == "tools")
    with make("greedy", peers_dir=PEERS_DIR, **({"model": str(GGUF)} if peer == "llama_cpp" else {})) as p:
        for item in (schema_item, tool_item):
            constraint = peer_constraint(item)
            out = p.run(chatml(item["prompt"]), 96, constraint)
            assert _shaped(out["text"], constraint), json.dumps(out["text"])


def _shaped(text: str, constraint: dict) -> bool:
    """Prefix, a JSON object with the schema's required keys, suffix: what each peer's grammar
    guarantees. (Full validity is what the benchmark reports: llama-cpp-python 0.3.36's schema
    converter does not bound integers, so its outputs may break a `maximum`.)"""
    inner = text.strip().removeprefix(constraint.get("prefix", "").strip())
    inner = inner.removesuffix(constraint.get("suffix", "").strip())
    value = json.loads(inner)
    schema = constraint["json_schema"]
    options = schema.get("anyOf", [schema])
    return any(set(o.get("required", [])) <= set(value) and value.get("name") == o["properties"]["name"].get(
        "const", value.get("name")) for o in options)
