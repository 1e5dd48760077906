"""The manifest: one JSON file that says what a store holds and exactly how it was made.

A store is only ever extended by a run with the very same configuration (model, layer, prompt
sets, columns, width, number format, shard size and id list): otherwise one store would silently
mix embeddings of two different encoders. ``compare_config`` lists every difference in words so
the error tells the user what changed, not just that something did.

The manifest holds no timestamps, hostnames or ranks, so the same inputs always give the same
bytes whether the store was written in one go, resumed, or written by several ranks.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..fileio import atomic_write_bytes
from .layout import manifest_path

STORE_FORMAT = "flameclip-store/1"
_MISSING = object()
_MAX_VALUE_CHARS = 80


class StoreMismatchError(ValueError):
    """An existing store was made by another configuration than the one asked for."""


def read_manifest(root: str) -> dict | None:
    """The manifest of the store at ``root``, or None when there is none.

    A manifest of this format must have every field, of the right type and consistent with the
    others (a store made by something else, or edited by hand, is refused here in one line rather
    than failing later with a KeyError or reading rows at the wrong offsets). Another format is
    returned as it is, for the caller to name.
    """
    path = manifest_path(os.fspath(root))
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:  # ValueError: not JSON, or not UTF-8
        raise StoreMismatchError(f"{path}: not a readable store manifest ({type(e).__name__}: {str(e)[:80]}); "
                                 "embed again into a new folder") from None
    problem = manifest_problem(m)
    if problem:
        raise StoreMismatchError(f"{path}: {problem}; this is not a manifest that `flameclip embed` writes "
                                 "(made by something else, or edited): embed again into a new folder")
    return m


def _count(v, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest's fields (None: nothing, or another format, for the caller)."""
    from .quant import DTYPES

    if not isinstance(m, dict):
        return "not a JSON object"
    if m.get("format") != STORE_FORMAT:
        return None
    if not isinstance(m.get("fingerprint"), dict):
        return "'fingerprint' must be an object"
    columns = m.get("columns")
    if not isinstance(columns, list) or not columns or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] and _count(c.get("k"), 1)
            for c in columns):
        return "'columns' must be a list of {name, k >= 1}"
    if len({c["name"] for c in columns}) != len(columns):
        return "'columns' names a column twice"
    for key, low in (("dim", 1), ("num_samples", 0), ("shard_size", 1), ("num_shards", 0)):
        if not _count(m.get(key), low):
            return f"'{key}' must be an integer >= {low}, not {m.get(key)!r}"
    if not isinstance(m.get("dtype"), str) or m["dtype"] not in DTYPES:
        return f"'dtype' must be one of {', '.join(DTYPES)}, not {m.get('dtype')!r}"
    if m["num_shards"] != -(-m["num_samples"] // m["shard_size"]):
        return f"'num_shards' {m['num_shards']} does not fit {m['num_samples']} samples in shards of {m['shard_size']}"
    if not isinstance(m.get("complete"), bool) or not isinstance(m.get("ids_sha256"), str):
        return "'complete' must be true or false and 'ids_sha256' a string"
    return None


def write_manifest(root: str, manifest: dict) -> None:
    """Write atomically: a reader sees the old manifest or the new one, never half of one."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(manifest_path(os.fspath(root)), text.encode("utf-8"))


def ids_digest(ids: list[str]) -> str:
    """sha256 of the ids joined by newlines (ids may not contain one, so the join is unambiguous)."""
    h = hashlib.sha256()
    for i, sample_id in enumerate(ids):
        if i:
            h.update(b"\n")
        h.update(sample_id.encode("utf-8"))
    return h.hexdigest()


def as_json(value):
    """``value`` as it will read back from the manifest (tuples become lists, and so on)."""
    return json.loads(json.dumps(value, ensure_ascii=False))


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)  # one line: newlines inside strings are escaped
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _difference(key: str, stored, asked) -> str:
    store_part = "store has none" if stored is _MISSING else f"store has {_show(stored)}"
    asked_part = "this run has none" if asked is _MISSING else f"this run asks for {_show(asked)}"
    return f"{key}: {store_part}, {asked_part}"


def compare_fingerprints(existing: dict, requested: dict) -> list[str]:
    """Human-readable differences between two fingerprints, nested keys joined by dots.

    >>> compare_fingerprints({"llm": {"layer": 29}}, {"llm": {"layer": 28}})
    ['llm.layer: store has 29, this run asks for 28']
    """
    existing, requested = as_json(existing), as_json(requested)
    a, b = _flatten(existing), _flatten(requested)
    diffs = []
    for key in list(a) + [k for k in b if k not in a]:
        stored, asked = a.get(key, _MISSING), b.get(key, _MISSING)
        if stored != asked:
            diffs.append(_difference(key, stored, asked))
    if not diffs and existing != requested:  # e.g. {"a.b": 1} against {"a": {"b": 1}}
        diffs.append("fingerprint: same values under differently nested keys")
    return diffs


def _compare_columns(existing: list, requested: list) -> list[str]:
    def shape(columns):
        return ", ".join(f"{c.get('name')}(k={c.get('k')})" for c in columns)

    if shape(existing) != shape(requested):
        return [f"columns: store has {shape(existing)}, this run asks for {shape(requested)}"]
    diffs = []
    for old, new in zip(existing, requested):
        diffs += [f"columns.{old['name']}.{d}" for d in compare_fingerprints(old, new)]
    return diffs


def compare_config(existing: dict, requested: dict) -> list[str]:
    """Every way the manifest ``requested`` by a writer differs from the one on disk.

    ``complete``, ``num_samples`` and ``num_shards`` are not compared: the first changes as the
    store fills, and the other two follow from the id list, which is compared by digest.
    """
    if existing.get("format") != STORE_FORMAT:
        return [f"format: store has {_show(existing.get('format'))}, this version of flameclip writes {STORE_FORMAT!r}"]
    diffs = compare_fingerprints(existing.get("fingerprint", {}), requested["fingerprint"])
    diffs += _compare_columns(existing.get("columns", []), requested["columns"])
    for key in ("dim", "dtype", "shard_size"):
        if existing.get(key) != requested[key]:
            diffs.append(_difference(key, existing.get(key, _MISSING), requested[key]))
    if existing.get("ids_sha256") != requested["ids_sha256"]:
        counts = f"store has {existing.get('num_samples')} samples, this run has {requested['num_samples']}"
        diffs.append(f"ids: the ids/captions file changed since the store was started ({counts})")
    return diffs


def mismatch_message(root: str, diffs: list[str]) -> str:
    """The one-line error for a store made by another configuration."""
    return f"{root} was made by another configuration ({'; '.join(diffs)}): use a new --out folder or delete it"
