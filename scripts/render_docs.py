#!/usr/bin/env python
"""Render the figure tables of README.md and docs/*.md from their JSON (specops/bench/tables.py):
every `<!-- table: RENDERER FILES -->` ... `<!-- end table -->` block is written again from the
files it names. --check writes nothing and exits 1 naming each page whose tables differ
(tests/test_docs.py runs the same comparison).

    python scripts/render_docs.py [--check]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench.tables import render_page  # noqa: E402


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page differs")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        rendered = render_page(text, page.parent)
        if rendered != text:
            stale.append(page.relative_to(ROOT).as_posix())
            if not args.check:
                page.write_text(rendered)
    for name in stale:
        print(f"{'stale' if args.check else 'rendered'}: {name}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
