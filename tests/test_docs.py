"""The docs stay true: every figure table in README.md and docs/*.md equals what its JSON renders
(specops/bench/tables.py; `python scripts/render_docs.py` writes them), every relative link and
anchor resolves, and the README's examples marked `<!-- doctest: offline -->` (run as they are)
or `<!-- doctest: server -->` (run against a live server on the small pair, its address put for
localhost:8888) run and succeed. Blocks without a mark (setup, deployment, long runs) are not run."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server_harness import ROOT, ready_server

from specops.bench.tables import RENDERERS, marked_tables, render_page

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
DOCTEST = re.compile(r"<!-- doctest: (offline|server) -->\n```(bash|python)\n(.*?)```", re.S)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_tables_equal_their_json(page: Path):
    text = page.read_text()
    assert render_page(text, page.parent) == text, (
        f"{_name(page)}: a table differs from its JSON; run `python scripts/render_docs.py`")


def test_a_changed_figure_is_caught():
    """The comparison can fail: a figure edited by hand, or a JSON that moved, shows."""
    page = ROOT / "docs" / "benchmarks.md"
    text = page.read_text()
    assert "| copy | auto | 2.30 | 0.86 | 305 | 1.19x |  |" in text
    assert render_page(text.replace("| 305 | 1.19x |", "| 310 | 1.19x |"), page.parent) == text


def test_every_figure_page_has_tables_and_every_renderer_is_used():
    specs = [spec for page in PAGES for spec in marked_tables(page.read_text())]
    assert {spec.split()[0] for spec in specs} == set(RENDERERS)
    assert marked_tables((ROOT / "README.md").read_text()) and marked_tables((ROOT / "docs/benchmarks.md").read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: {resolved} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {_name(resolved)}")
    assert not broken, f"{_name(page)}:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert slug("Does speculation pay on the pod's CPU? (`specops profile`)") == \
        "does-speculation-pay-on-the-pods-cpu-specops-profile"
    assert slug("The verify pass: the tiled kernel") == "the-verify-pass-the-tiled-kernel"


# -- the README's examples ----------------------------------------------------------------------------
def readme_examples(kind: str) -> list[tuple[str, str]]:
    return [(lang, code) for k, lang, code in DOCTEST.findall((ROOT / "README.md").read_text()) if k == kind]


def run_example(lang: str, code: str, base_url: str | None = None) -> subprocess.CompletedProcess:
    code = code.replace(".venv/bin/", str(Path(sys.executable).parent) + "/")  # this environment's
    if base_url:
        code = code.replace("http://localhost:8888", base_url).replace("localhost:8888", base_url)
    argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_readme_marks_its_runnable_examples():
    assert len(readme_examples("offline")) >= 1 and len(readme_examples("server")) >= 2


@pytest.mark.parametrize("lang, code", readme_examples("offline"))
def test_readme_offline_example_runs(lang, code):
    out = run_example(lang, code)
    assert out.returncode == 0 and out.stdout.strip(), f"{code}\n{out.stderr[-3000:]}"


@pytest.fixture(scope="module")
def server():
    yield from ready_server()


@pytest.mark.parametrize("lang, code", readme_examples("server"))
def test_readme_server_example_runs(server, lang, code):
    out = run_example(lang, code, server.base_url)
    assert out.returncode == 0 and out.stdout.strip(), f"{code}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
