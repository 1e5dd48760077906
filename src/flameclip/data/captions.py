"""Read a captions table: an id column and one or more caption columns, from jsonl, csv or parquet."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


class CaptionsFileError(ValueError):
    """A captions file that cannot be used as given; the message is one line and says what to do."""


@dataclass
class CaptionTable:
    path: str
    ids: list[str]
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.ids)


def iter_records(path: Path):
    """Yield (row_number, dict) for every record; row numbers are 1-based lines or records."""
    try:
        yield from _iter_records(path)
    except UnicodeDecodeError:
        # The decoder's offset is within its read-ahead chunk, not the file: find the byte again.
        line, offset = _first_bad_utf8(path)
        raise CaptionsFileError(f"{path}: line {line} is not UTF-8 text (byte {offset} of the file); "
                                "save it as UTF-8") from None


def _first_bad_utf8(path: Path) -> tuple[int, int]:
    """(1-based line, 0-based file offset) of the first byte that is not UTF-8."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return n, offset + e.start
            offset += len(raw)
    return 0, offset


def _iter_records(path: Path):
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CaptionsFileError(f"{path}: line {n} is not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise CaptionsFileError(f"{path}: line {n} is not a JSON object")
                yield n, rec
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            # Line 1 is the header, so record i is on line i + 1 (for one-line records).
            for n, rec in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), start=2):
                # DictReader files extra fields under the key None and gives missing ones the value None
                if None in rec or None in rec.values():
                    raise CaptionsFileError(f"{path}: record {n} has {'more' if None in rec else 'fewer'} fields "
                                            "than the header; quote captions that hold the delimiter")
                yield n, rec
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, rec in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield n, rec
    else:
        raise CaptionsFileError(f"{path}: unknown captions format '{suffix}'; use .jsonl, .csv, .tsv or .parquet")


def read_captions(path: str | Path, columns: list[str], id_column: str = "id") -> CaptionTable:
    """Read ids and the named caption columns. Missing columns and duplicate ids are errors.

    Captions are returned as found (``None`` becomes ""); empty ones are judged by the caller,
    which knows whether to skip or refuse them.
    """
    path = Path(path)
    if not path.exists():
        raise CaptionsFileError(f"{path}: captions file not found")
    ids: list[str] = []
    cols: dict[str, list[str]] = {c: [] for c in columns}
    seen: dict[str, int] = {}
    for n, rec in iter_records(path):
        if id_column not in rec or rec[id_column] in (None, ""):
            raise CaptionsFileError(f"{path}: record {n} has no '{id_column}'; every record needs an id")
        sid = str(rec[id_column])
        if sid in seen:
            raise CaptionsFileError(f"{path}: id '{sid}' appears twice (records {seen[sid]} and {n}); ids must be unique")
        seen[sid] = n
        for c in columns:
            if c not in rec:
                raise CaptionsFileError(
                    f"{path}: record {n} (id '{sid}') has no column '{c}'; columns found: {', '.join(rec)}"
                )
            v = rec[c]
            cols[c].append("" if v is None else str(v))
        ids.append(sid)
    if not ids:
        raise CaptionsFileError(f"{path}: no records")
    return CaptionTable(str(path), ids, cols)
