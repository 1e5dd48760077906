"""Writing a TrainConfig back as the TOML that ``config.load_config`` reads (a run's config.toml)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as TOML that ``load_config`` reads back (None values are left out)."""
    d = cfg.to_dict()
    model = d.pop("model")
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if v is not None]
    lines.append("")
    lines.append("[model]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in model.items() if v is not None]
    return "\n".join(lines) + "\n"


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg), encoding="utf-8")
