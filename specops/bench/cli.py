"""`specops bench SUBCOMMAND`: the flags of each subcommand come from its module's
`add_arguments`, and its `main(args)` runs it (imported only when that subcommand runs, so that
`--help` stays quick)."""
from __future__ import annotations

import argparse
import importlib

# subcommand -> (module under specops.bench, one line for `specops bench --help`)
SUBCOMMANDS = {
    "speculators": ("speculators", "speculators vs target-only on the prompt sets, peers too"),
    "serve": ("serve", "N clients against a running or started server"),
    "curves": ("curves", "a target pass's cost over 1..N tokens, per kernel"),
    "soak": ("soak", "a long mixed load against a server, and its verdict"),
    "join": ("join", "a long prompt joining a running stream: the stream's gaps, the prompt's latency"),
    "attention": ("attention", "specops.Attention against onnxruntime's GroupQueryAttention, one layer"),
}


class _OneLineFormatter(argparse.HelpFormatter):
    """Room for the longest subcommand's name beside its help (argparse measures subcommands
    without their extra indent, and puts a long name's help on the next line)."""

    def add_argument(self, action):
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length = max(self._action_max_length, max(map(len, SUBCOMMANDS)) + 6)


def _module(name: str):
    return importlib.import_module(f"specops.bench.{SUBCOMMANDS[name][0]}")


def add_parser(sub) -> None:
    """Adds `bench` and its subcommands to the `specops` subparsers `sub`."""
    bench = sub.add_parser("bench", help="measure speed on this machine: speculators, serve, curves, soak, join, attention",
                           description="Benchmarks (scripts, not tests): each prints one JSON report "
                                       "and writes it with --json.",
                           formatter_class=_OneLineFormatter)
    inner = bench.add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    for name, (_, line) in SUBCOMMANDS.items():
        module = _module(name)
        parser = inner.add_parser(name, help=line, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=lambda args, name=name: _module(name).main(args))
