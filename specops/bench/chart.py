"""Draw a `specops bench speculators` report: tok/s and TPJ per speculator and prompt set,
with the target-only baseline and the cost-model bound drawn in."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def draw(report: dict, path: Path) -> None:
    sets = list(report["sets"])
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 7), squeeze=False)
    for col, set_name in enumerate(sets):
        rows = report["sets"][set_name]["speculators"]
        names = list(rows)
        x = range(len(names))
        base = rows.get("none", {}).get("tok_s")
        ax = axes[0][col]
        ax.bar(x, [rows[n]["tok_s"] for n in names], color="#4c72b0")
        peers = report["sets"][set_name].get("peers", {})
        for i, (peer, figures) in enumerate(peers.items()):
            if "tok_s" in figures:
                ax.axhline(figures["tok_s"], ls=":", color=f"C{(i + 2) % 10}", label=peer)
        if base:
            ax.axhline(base, ls="--", color="grey", label="target-only (none)")
            for i, n in enumerate(names):
                if rows[n].get("bound"):
                    ax.plot(i, base * rows[n]["bound"], "r_", ms=30, mew=2,
                            label="cost-model bound" if n == "ngram" or "bound" not in rows.get("ngram", {}) else None)
        ax.set_xticks(list(x), names, rotation=25, fontsize=8)
        ax.set_title(f"{set_name}: tokens/s (median)")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        ax.bar(x, [rows[n]["tpj"] for n in names], color="#55a868")
        ax.axhline(1.0, ls="--", color="grey", label="target-only TPJ = 1")
        ax.set_xticks(list(x), names, rotation=25, fontsize=8)
        ax.set_title(f"{set_name}: tokens per jump")
        ax.legend(fontsize=7)
    fig.suptitle(f"SpecOps on {report.get('cores', '?')} CPU cores, k <= {report.get('k')}, "
                 f"{report.get('max_new_tokens')} new tokens, {report.get('repeats')} interleaved repeats")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
