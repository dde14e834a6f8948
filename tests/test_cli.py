"""The command line as a user runs it (a subprocess): `specops generate` with JSON out and every
speculator; every command's --help, `python -m specops`, --version; a tiny `specops bench` run."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


COMMANDS = ["serve", "generate", "prepare", "profile", "bench"]
BENCH = ["speculators", "serve", "curves", "soak", "join", "attention"]


def test_python_m_specops_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "specops", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: specops ")


def test_version():
    from specops import __version__

    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"specops {__version__}", out.stderr
    with open(ROOT / "pyproject.toml", "rb") as f:  # one version: the package's and the distribution's
        assert tomllib.load(f)["project"]["version"] == __version__


def _command_lines(help_text: str, names: list[str]) -> dict[str, list[str]]:
    """The lines of a `--help` listing from each command's name to the next one's (or a blank line)."""
    lines = help_text.splitlines()
    found = {}
    for i, line in enumerate(lines):
        words = line.split()
        if words and words[0] in names and line.startswith("    ") and words[0] not in found:
            block = [line]
            for nxt in lines[i + 1:]:
                if not nxt.strip() or (nxt.split()[0] in names and nxt.startswith("    ")):
                    break
                block.append(nxt)
            found[words[0]] = block
    return found


@pytest.mark.parametrize("argv, names", [([], COMMANDS), (["bench"], BENCH)])
def test_help_lists_each_command_on_one_line(argv, names):
    out = subprocess.run([sys.executable, "-m", "specops", *argv, "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    listed = _command_lines(out.stdout, names)
    assert sorted(listed) == sorted(names), out.stdout
    for name, block in listed.items():
        assert len(block) == 1 and len(block[0].split()) > 2, f"{name}: {block}"  # its name and its help


@pytest.mark.parametrize("command", COMMANDS + [f"bench {b}" for b in BENCH])
def test_every_command_has_help(command):
    out = run_cli(*command.split(), "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: specops {command}"), out.stdout[:200]


def test_a_bench_run_records_its_command_and_machine(tmp_path):
    """`specops bench speculators` on the small pair, tiny: one JSON report with where it came from."""
    out = run_cli("bench", "speculators", "--sets", "copy", "--limit", "1", "--repeats", "1", "--max-new-tokens",
                  "8", "--speculators", "none,ngram", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == json.loads(out.stdout.splitlines()[-1])
    assert report["run"]["command"].startswith("specops bench speculators --sets copy")
    assert report["run"]["machine"]["cpus"] >= 1 and report["run"]["date"]
    assert set(report["sets"]["copy"]["speculators"]) == {"none", "ngram"}


def test_the_attention_bench_times_both_operators_on_the_same_passes(tmp_path):
    """`specops bench attention`, tiny: each case names both operators' times (skipped where
    specops' kernel library cannot run)."""
    from specops.runtime import kernels

    try:
        kernels.library(kernels.default_cache_dir())
    except kernels.KernelUnavailable as err:
        pytest.skip(f"specops' kernel library cannot run here: {err}")
    out = run_cli("bench", "attention", "--past", "0,40", "--rows", "1,5", "--repeats", "1",
                  "--json", str(tmp_path / "a.json"))
    assert out.returncode == 0, out.stderr
    cases = json.loads((tmp_path / "a.json").read_text())["cases"]
    assert [(c["past"], c["rows"]) for c in cases] == [(0, 1), (0, 5), (40, 1), (40, 5)]
    assert all(c["specops_cpu_ms"] > 0 and c["onnxruntime_cpu_ms"] > 0 for c in cases)
