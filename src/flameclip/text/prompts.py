"""Prompt sets as data.

A prompt set is a shared prefix template holding ``{caption}`` and K prompts, each one asking for a
facet of the image "in just one word". Facet k of a caption is the text ``prefix + prompts[k]``.
The prefix ends before its trailing space and every prompt starts with a space, so that the tokens
of the prefix are (for the tokenizers we ship for) an exact prefix of the tokens of each facet; the
encoder does not rely on it, it shares only the longest common token prefix of the K facets.

The reference sets ``single``, ``short3`` and ``long7`` ship as JSON files beside this module; a
user's own set is a JSON file with the same fields.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUILTIN = ("single", "short3", "long3", "long7")


@dataclass(frozen=True)
class PromptSet:
    name: str
    prefix: str
    prompts: tuple[str, ...]
    facet_names: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.prefix, str):
            raise ValueError(f"prompt set '{self.name}': the prefix must be a string")
        if not all(isinstance(p, str) and p for p in self.prompts) or not all(isinstance(f, str) for f in self.facet_names):
            raise ValueError(f"prompt set '{self.name}': prompts and facet_names must be lists of non-empty strings")
        if self.prefix.count("{caption}") != 1:
            raise ValueError(f"prompt set '{self.name}': the prefix must contain '{{caption}}' exactly once")
        if not self.prompts:
            raise ValueError(f"prompt set '{self.name}' has no prompts")
        if self.facet_names and len(self.facet_names) != len(self.prompts):
            raise ValueError(f"prompt set '{self.name}': {len(self.facet_names)} facet names for {len(self.prompts)} prompts")

    @property
    def k(self) -> int:
        return len(self.prompts)

    def render(self, caption: str) -> list[str]:
        """The K full facet texts of one (already cleaned) caption."""
        head = self.prefix.replace("{caption}", caption)
        return [head + p for p in self.prompts]

    def fingerprint(self) -> str:
        """A short hash of exactly what reaches the tokenizer."""
        payload = json.dumps({"prefix": self.prefix, "prompts": list(self.prompts)}, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "prefix": self.prefix,
            "prompts": list(self.prompts),
            "facet_names": list(self.facet_names),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PromptSet":
        for key in ("prompts", "facet_names"):
            # tuple("abc") would silently make three one-character prompts
            if key in d and not isinstance(d[key], list):
                raise ValueError(f"prompt set {d.get('name')!r}: '{key}' must be a list of strings, "
                                 f"got {type(d[key]).__name__}")
        return cls(
            name=d["name"],
            prefix=d["prefix"],
            prompts=tuple(d["prompts"]),
            facet_names=tuple(d.get("facet_names", ())),
            description=d.get("description", ""),
        )


def load_prompt_set(name_or_path: str | PromptSet) -> PromptSet:
    """A built-in set by name, or a JSON file with fields name, prefix, prompts[, facet_names]."""
    if isinstance(name_or_path, PromptSet):
        return name_or_path
    if name_or_path in BUILTIN:
        text = resources.files("flameclip.text").joinpath("prompt_sets", f"{name_or_path}.json").read_text("utf-8")
        return PromptSet.from_dict(json.loads(text))
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"prompt set '{name_or_path}' is neither a built-in set ({', '.join(BUILTIN)}) nor an existing JSON file"
        )
    try:
        return PromptSet.from_dict(json.loads(path.read_text("utf-8")))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a valid prompt set file ({e}); expected JSON with name, prefix, prompts") from e


def clean_caption(caption: str) -> str:
    """The reference clean-up: strip the ends, double quotes become single, and end with a full stop.

    Double quotes would close the quoted caption inside the prompt early. As in the reference, a
    caption that already ends in ``.``, ``?`` or a quote gets no extra full stop, a final ``?`` then
    becomes ``.``, and whitespace inside the caption (tabs, newlines) is left as it is.
    """
    text = caption.strip().replace('"', "'")
    if text and text[-1] not in ".?'":
        text += "."
    if text.endswith("?"):
        text = text[:-1] + "."
    return text
