"""The ``flameclip`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

# Nothing is ever downloaded at run time: weights and data come from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    # Each command's parser and runner live in its own module; they import the library lazily, so
    # `flameclip --help` and Ctrl-C at start-up stay quick.
    from . import ablate, demo, embed, eval, explain, llms, recaption, search, train, verify

    parser = argparse.ArgumentParser(prog="flameclip", description="Language-image pre-training with a frozen LLM (FLAME)")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, module in (("embed", embed), ("verify", verify), ("train", train), ("eval", eval), ("demo", demo),
                         ("ablate", ablate), ("explain", explain), ("recaption", recaption)):
        module.add_parser(sub)
        commands[name] = module.run
    search.add_index_parser(sub)
    search.add_search_parser(sub)
    llms.add_parser(sub)
    commands.update(index=search.run_index, search=search.run_search, llms=llms.run)
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


# Set when a Ctrl-C was seen, by the handler below or by the hook for one Python dropped: any error
# after it is the interruption, however a library reported it.
_ctrl_c: list[bool] = []


def _on_ctrl_c(signum, frame) -> None:
    """Python's own Ctrl-C, remembered: a Ctrl-C that lands inside a C extension's import can come
    out as another error (numpy half-imported: "cannot load module more than once per process"),
    and it is still the user's Ctrl-C, not a fault to report."""
    _ctrl_c.append(True)
    raise KeyboardInterrupt


def _note_ctrl_c(unraisable) -> None:
    """A Ctrl-C that lands inside a callback Python runs for itself (a weakref's, during imports) is
    printed as "Exception ignored in ..." and dropped, and the command would go on. Note it instead;
    ``main`` stops with its one line as soon as the imports are done."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt):
        _ctrl_c.append(True)
        return
    sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> int:
    # Everything, imports included, runs inside the handlers: Ctrl-C at start-up is one line too.
    sys.unraisablehook = _note_ctrl_c
    _ctrl_c.clear()
    # Only Python's own handler is replaced (not where Ctrl-C is ignored, as in background jobs, nor
    # another program's), and only in the main thread, where signal handlers live; it is put back.
    previous = signal.getsignal(signal.SIGINT)
    own = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if own:
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        return _run(argv)
    finally:
        if own:
            signal.signal(signal.SIGINT, previous)


def _run(argv: list[str] | None) -> int:
    command = (argv if argv is not None else sys.argv[1:])[:1] or ["?"]
    command = command[0]
    try:
        parser, commands = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if _ctrl_c:
            raise KeyboardInterrupt
        return commands[command](args)
    except BaseException as e:  # noqa: BLE001 - the user gets one line; FLAMECLIP_DEBUG=1 shows the traceback
        if isinstance(e, SystemExit):
            raise
        if _interrupted(e) or _ctrl_c:
            print(f"flameclip {command}: interrupted; {_INTERRUPTED.get(command, 'nothing was lost')}", file=sys.stderr)
            return 130
        if os.environ.get("FLAMECLIP_DEBUG") or not isinstance(e, Exception):
            raise
        print(f"flameclip {command}: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    """Known, user-facing failures: their message; others: the type too, and where the traceback is."""
    try:
        return _known_line(e)
    except Exception:  # noqa: BLE001 - the library itself cannot be imported (a broken install): still one line
        return f"{type(e).__name__}: {user_message(e)} (set FLAMECLIP_DEBUG=1 for the traceback)"


def _known_line(e: Exception) -> str:
    from ..data.captions import CaptionsFileError
    from ..data.images import DataError
    from ..embed import EmbedError
    from ..recaption import RecaptionError
    from ..store import StoreMismatchError
    from ..text.llm import LLMNotFoundError
    from ..train import TrainingDiverged

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
