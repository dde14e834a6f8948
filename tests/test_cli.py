"""`specops generate` as a user runs it: a subprocess, JSON out, every speculator."""
import json
import subprocess
import sys

import pytest

SPECULATORS = ["none", "ngram", "draft", "hybrid", "auto"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specops.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("speculator", SPECULATORS)
def test_generate_json(speculator):
    out = run_cli("generate", "--prompt", "def read_config(path):\n", "--max-new-tokens", "24",
                  "--speculator", speculator, "--k-draft", "4", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert {"generated_text", "tokens_per_second", "avg_tokens_per_jump", "latency_ms"} <= set(body)
    assert body["speculator"] == speculator and body["generated_text"]
    assert body["usage"]["completion_tokens"] <= 24
    assert body["avg_tokens_per_jump"] >= 1.0


def test_generate_prints_text():
    out = run_cli("generate", "--prompt", "def read_config(path):", "--max-new-tokens", "16")
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_chat_wraps_the_prompt_in_the_template():
    plain = json.loads(run_cli("generate", "--prompt", "Explain lambda.", "--max-new-tokens", "4", "--json").stdout)
    out = run_cli("generate", "--prompt", "Explain lambda.", "--chat", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    chat = json.loads(out.stdout)
    # <|user|>, \n, <|end|>, \n, <|assistant|>, \n around the same text
    assert chat["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] + 6


def test_errors_are_clear():
    out = run_cli("generate", "--prompt", "x", "--target-model", "/nonexistent")
    assert out.returncode == 2 and "/nonexistent: model folder does not exist" in out.stderr
    out = run_cli("generate", "--prompt", "x", "--max-new-tokens", "0")
    assert out.returncode == 2 and "max_new_tokens must be >= 1" in out.stderr


@pytest.mark.parametrize("command", ["generate", "serve", "profile", "prepare"])
def test_help_lists_every_setting(command):
    """`--help` formats every setting's description (a '%' in one crashed it for every command)."""
    out = run_cli(command, "--help")
    assert out.returncode == 0, out.stderr
    if command != "prepare":
        assert "--kernel {auto,tiled,stock}" in out.stdout and "7-14% more" in out.stdout
