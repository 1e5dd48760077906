"""The ``flameclip`` command line."""

from __future__ import annotations

import argparse
import os
import sys

# Nothing is ever downloaded at run time: weights and data come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _parse_prompts(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        col, sep, ps = item.partition("=")
        if not sep or not col or not ps:
            raise SystemExit(f"flameclip: --prompts takes COLUMN=PROMPT_SET pairs (e.g. long=long7), got '{item}'")
        out[col] = ps
    return out


def _add_embed(sub):
    p = sub.add_parser("embed", help="encode captions with a frozen LLM into an embedding store")
    p.add_argument("--captions", required=True, help="jsonl, csv, tsv or parquet with an id column and caption columns")
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument("--llm", default="smollm2-135m", help="packaged name, .gguf file or local HF folder")
    p.add_argument("--prompts", nargs="+", default=["caption=long7"], metavar="COLUMN=SET",
                   help="prompt set per caption column: single, short3, long7 or a JSON file (default caption=long7)")
    p.add_argument("--id-column", default="id")
    p.add_argument("--layer", type=int, default=-2, help="hidden_states index to read (default -2: second-to-last layer)")
    p.add_argument("--compute-dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--dtype", dest="store_dtype", default="fp16", choices=["fp16", "int8", "fp32"], help="storage dtype")
    p.add_argument("--route", default="auto", choices=["auto", "fda", "kv", "separate", "causal"],
                   help="auto: the measured-fastest exact route; causal: the no-decoupling ablation (not exact)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None, help="longest facet sequence, prompt included (default 512); longer captions are cut and counted")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-empty", action="store_true", help="leave out samples with an empty caption instead of stopping")
    p.add_argument("--text-cache", default=None, metavar="DIR",
                   help="reuse the states of captions encoded before by the same LLM and prompts, and add the new "
                        "ones (after editing a few captions, only those are encoded again); off by default")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_embed(args) -> int:
    from .embed import EmbedConfig, run_embed

    cfg = EmbedConfig(
        captions=args.captions,
        out=args.out,
        prompts=_parse_prompts(args.prompts),
        llm=args.llm,
        id_column=args.id_column,
        layer=args.layer,
        compute_dtype=args.compute_dtype,
        store_dtype=args.store_dtype,
        route=args.route,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        shard_size=args.shard_size,
        device=args.device,
        skip_empty=args.skip_empty,
        text_cache=args.text_cache,
    )
    summary = run_embed(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary.table())
        if summary.truncated:
            print(f"{summary.truncated} caption(s) were longer than the {summary.max_tokens}-token cap and were cut "
                  "inside the caption; pass --max-tokens to raise it")
        if summary.skipped_ids:
            print(f"skipped ids (first 5): {', '.join(summary.skipped_ids[:5])}")
    return 0


def _add_verify(sub):
    p = sub.add_parser("verify", help="check that every shard of an embedding store is whole (sizes and sha256)")
    p.add_argument("store", help="the folder made by `flameclip embed`")
    return p


def cmd_verify(args) -> int:
    from .store import read_manifest
    from .store.verify import verify_store

    manifest = read_manifest(args.store)
    if manifest is None:
        raise FileNotFoundError(f"{args.store} is not an embedding store (no manifest.json)")
    checked, problems = verify_store(args.store, manifest, full=True)
    for line in problems:
        print(line)
    print(f"{'shards':<10} {checked}\n{'damaged':<10} {len(problems)}\n{'verdict':<10} "
          + ("whole" if not problems else "damaged: run the same `flameclip embed` command to embed those shards again"))
    return 0 if not problems else 1


def _add_train(sub):
    p = sub.add_parser("train", help="train an image tower on images + an embedding store (or the CLIP baseline)")
    p.add_argument("--config", help="TOML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that override the config, e.g. lr=3e-4 model.vision_depth=4")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        rows = [
            ("run folder", str(result.out)),
            ("steps", str(result.steps)),
            ("final loss", f"{result.final_loss:.4f}"),
            ("images/s", f"{result.images_per_s:.1f}"),
            ("skipped images", str(result.skipped_images)),
            ("checkpoint", str(result.checkpoint)),
        ] + [(k, f"{v:.3f}") for k, v in result.eval.items()]
        w = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    return 0


def _add_eval(sub):
    p = sub.add_parser("eval", help="zero-shot, retrieval, multilingual and linear-probe evaluation, side by side")
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint folder (repeat to compare)")
    p.add_argument("--label", action="append", default=[], help="a name per checkpoint, in order (default FLAME/CLIP)")
    p.add_argument("--data", required=True, help="evaluation suite: a TOML file with [[task]] tables")
    p.add_argument("--tasks", default="", help="comma-separated subset of the suite's tasks to run")
    p.add_argument("--out", default="runs/eval", help="folder for results.json, report.md and plots")
    p.add_argument("--text-cache", default=None, help="where LLM text embeddings are cached")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no bar while the LLM encodes query texts")
    return p


def _labels(paths, given, models) -> list[str]:
    if given and len(given) != len(paths):
        raise ValueError(f"{len(given)} --label for {len(paths)} --checkpoint; give one label per checkpoint or none")
    labels = list(given) or ["FLAME" if m.is_flame else "CLIP" for m in models]
    seen = {}
    for i, lab in enumerate(labels):  # make duplicates distinct with the folder name
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[i] = f"{lab} ({os.path.basename(os.path.normpath(paths[i]))})"
    return labels


def cmd_eval(args) -> int:
    from .evaluate.report import console_table, write_report
    from .evaluate.tasks import load_suite, run_suite
    from .inference import load

    specs = load_suite(args.data)
    if args.tasks:
        wanted = set(args.tasks.split(","))
        specs = [s for s in specs if s.task in wanted or s.name in wanted]
        if not specs:
            raise ValueError(f"--tasks {args.tasks} matches no task of {args.data}")
    models = [load(c, device=args.device, text_cache=args.text_cache, progress=not args.no_progress)
              for c in args.checkpoint]
    labels = _labels(args.checkpoint, args.label, models)
    results = run_suite(zip(labels, args.checkpoint, models), specs, batch_size=args.batch_size, workers=args.workers,
                        log=lambda line: print(line, file=sys.stderr),
                        after_task=lambda r: write_report(r, args.out))
    paths = write_report(results, args.out)
    print(console_table(results))
    print(f"report: {paths.get('report', args.out)}")
    return 0


def cmd_llms(args) -> int:
    import importlib.util

    from .text.llm import PACKAGED_LLMS

    print(f"{'name':<14} {'installed':<10} {'license':<20} description")
    for name, entry in PACKAGED_LLMS.items():
        installed = all(importlib.util.find_spec(m) is not None for m, _ in entry.chunks)
        print(f"{name:<14} {'yes' if installed else 'no':<10} {entry.license:<20} {entry.description}")
        if not installed:
            print(f"{'':<14} install: {entry.install_hint}")
    print("Any local Hugging Face folder (safetensors) or .gguf file can be given to --llm as well.")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    from . import ablate as _ablate
    from . import demo as _demo
    from . import explain as _explain
    from . import recaption as _recaption
    from . import search_cli as _search_cli

    parser = argparse.ArgumentParser(prog="flameclip", description="Language-image pre-training with a frozen LLM (FLAME)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_embed(sub)
    _add_verify(sub)
    _add_train(sub)
    _add_eval(sub)
    _demo.add_parser(sub)
    _ablate.add_parser(sub)
    _explain.add_parser(sub)
    _recaption.add_parser(sub)
    _search_cli.add_index_parser(sub)
    _search_cli.add_search_parser(sub)
    sub.add_parser("llms", help="list the packaged LLMs and whether they are installed")
    commands = {"embed": cmd_embed, "verify": cmd_verify, "train": cmd_train, "eval": cmd_eval, "llms": cmd_llms,
                "demo": _demo.run, "ablate": _ablate.run, "explain": _explain.run, "index": _search_cli.run_index,
                "search": _search_cli.run_search, "recaption": _recaption.run}
    return parser, commands


def _interrupted(e: BaseException) -> bool:
    """Ctrl-C, also when a library caught it and raised its own error from it (transformers' lazy
    imports turn it into "Could not import module ...")."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    # Everything, imports included, runs inside the handlers: Ctrl-C at start-up is one line too.
    command = (argv if argv is not None else sys.argv[1:])[:1] or ["?"]
    command = command[0]
    try:
        parser, commands = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        return commands[command](args)
    except BaseException as e:  # noqa: BLE001 - the user gets one line; FLAMECLIP_DEBUG=1 shows the traceback
        if isinstance(e, SystemExit):
            raise
        if _interrupted(e):
            print(f"flameclip {command}: interrupted; {_INTERRUPTED.get(command, 'nothing was lost')}", file=sys.stderr)
            return 130
        if os.environ.get("FLAMECLIP_DEBUG") or not isinstance(e, Exception):
            raise
        print(f"flameclip {command}: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    """Known, user-facing failures: their message; others: the type too, and where the traceback is."""
    from .data.captions import CaptionsFileError
    from .data.images import DataError
    from .embed import EmbedError
    from .recaption import RecaptionError
    from .store import StoreMismatchError
    from .text.llm import LLMNotFoundError
    from .train import TrainingDiverged

    ours = (CaptionsFileError, DataError, EmbedError, RecaptionError, StoreMismatchError, LLMNotFoundError,
            TrainingDiverged)
    known = (*ours, FileNotFoundError, FileExistsError, ValueError, RuntimeError, TimeoutError)
    hint = "" if isinstance(e, ours) else " (set FLAMECLIP_DEBUG=1 for the traceback)"
    prefix = "" if isinstance(e, known) else f"{type(e).__name__}: "
    return f"{prefix}{user_message(e)}{hint}"


def user_message(e: BaseException) -> str:
    """The first line of an error, or for one raised in a DataLoader worker the original message.

    torch re-raises a worker's exception in the main process as "Caught X in DataLoader worker
    process N." followed by the worker's traceback, whose last line is the message the user needs.
    """
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.splitlines()
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and len(lines) > 1:
        last = lines[-1].strip()
        head, sep, rest = last.partition(": ")
        # "flameclip.data.images.DataError: message" -> "message"; keep other types' names
        if sep and head.replace(".", "").replace("_", "").isalnum():
            return rest if head.endswith(("DataError", "CaptionsFileError")) else f"{head.rsplit('.', 1)[-1]}: {rest}"
        return last
    return lines[0]


# What an interrupted command leaves behind, said when the user presses Ctrl-C.
_INTERRUPTED = {
    "embed": "finished shards are kept; run the same command to resume",
    "train": "the last checkpoint is kept (and one was written now if possible); run again with resume=latest",
    "eval": "results of finished tasks are in the output folder",
    "index": "nothing was written; run the same command again",
    "recaption": "finished chunks are kept; run the same command to resume",
}


if __name__ == "__main__":
    sys.exit(main())
