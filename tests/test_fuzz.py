"""Seeded fuzzing of what users hand flameclip: captions files, configs and store manifests.

Each case mutates a valid input at random (bytes flipped, cut, control characters and bad UTF-8
inserted, keys dropped, values of the wrong type). Whatever the mutation, the outcome must be one
of two: the input is read and what comes back is well formed, or the error the user sees is one
line that names the file or key. A bare TypeError, KeyError or a traceback's worth of text fails.
"""

import json
import math

import numpy as np
import pytest

from flameclip.config import TrainConfig, load_config, validate_config
from flameclip.data.captions import read_captions
from flameclip.store import EmbeddingStore
from flameclip.store.layout import manifest_path

from .test_store import build, make_ids, make_rows

CASES = 60
NASTY = [b"\x00", b"\x1b[2J", b"\xff\xfe", b"\xed\xa0\x80", b"\\ud800", b"\"", b"\n", b"\r", b",", b"{", b"}",
         b"\xe2\x80\xae", "é漢🙂".encode(), b"x" * 5000]


def _mutate_bytes(rng, blob: bytes) -> bytes:
    b = bytearray(blob)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(4))
        at = int(rng.integers(0, len(b) + 1))
        if kind == 0 and b:
            b[min(at, len(b) - 1)] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            b[at:at] = NASTY[int(rng.integers(len(NASTY)))]
        elif kind == 2:
            del b[at:at + int(rng.integers(1, 40))]
        else:
            b = b[:at]
    return bytes(b)


def _one_line(e: BaseException, *names: str) -> bool:
    msg = str(e)
    return "\n" not in msg.strip() and any(n in msg for n in names)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_fuzzed_captions_files_are_read_or_refused_in_one_line(tmp_path, suffix):
    rows = [{"id": f"s{i}", "raw": f"a photo of thing {i}", "short": f"A thing, {i}."} for i in range(6)]
    if suffix == ".jsonl":
        good = "".join(json.dumps(r) + "\n" for r in rows).encode()
    else:
        good = ("id,raw,short\n" + "".join(f"{r['id']},{r['raw']},\"{r['short']}\"\n" for r in rows)).encode()
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "refused": 0}
    for case in range(CASES):
        path = tmp_path / f"c{case}{suffix}"
        path.write_bytes(_mutate_bytes(rng, good))
        try:
            table = read_captions(path, ["raw", "short"])
        except ValueError as e:
            assert _one_line(e, str(path)), f"case {case}: {e!r}"
            outcomes["refused"] += 1
            continue
        assert len(set(table.ids)) == len(table.ids) == len(table.columns["raw"]) == len(table.columns["short"])
        assert all(isinstance(t, str) for col in table.columns.values() for t in col)
        outcomes["read"] += 1
    assert outcomes["read"] and outcomes["refused"]  # the mutations reach both outcomes


def _random_value(rng):
    return [str(int(rng.integers(-5, 5))), "-1", "0", "nan", "inf", "-inf", "1e400", "\"x\"", "[1, 2]", "true",
            "{a = 1}", "\"\"", "99999999999999999999", "0.5", "\"softmax\""][int(rng.integers(15))]


def test_fuzzed_config_overrides_are_valid_or_refused_in_one_line():
    keys = [f.name for f in TrainConfig.__dataclass_fields__.values() if f.name != "model"]
    keys += [f"model.{k}" for k in TrainConfig().model.__dataclass_fields__]
    rng = np.random.default_rng(1)
    outcomes = {"valid": 0, "refused": 0}
    for case in range(4 * CASES):
        key = keys[int(rng.integers(len(keys)))]
        if rng.random() < 0.2:  # a typo: a letter dropped
            i = int(rng.integers(len(key)))
            key = key[:i] + key[i + 1:]
        override = f"{key}={_random_value(rng)}"
        try:
            cfg = load_config(None, [override])
        except ValueError as e:
            assert _one_line(e, *key.split("."), override), f"{override}: {e!r}"
            outcomes["refused"] += 1
            continue
        validate_config(cfg)  # what loads is what train accepts
        values = [*vars(cfg).values(), *vars(cfg.model).values()]
        numbers = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v]) if isinstance(x, float)]
        assert all(math.isfinite(x) for x in numbers), override
        outcomes["valid"] += 1
    assert outcomes["valid"] and outcomes["refused"]


def _mutate_json(rng, value, depth=0):
    """A copy of a JSON value with one random change somewhere in it."""
    if isinstance(value, dict) and value and (depth == 0 or rng.random() < 0.7):
        key = sorted(value)[int(rng.integers(len(value)))]
        out = dict(value)
        if rng.random() < 0.25:
            del out[key]
        else:
            out[key] = _mutate_json(rng, value[key], depth + 1)
        return out
    if isinstance(value, list) and value and rng.random() < 0.7:
        out = list(value)
        i = int(rng.integers(len(out)))
        out[i] = _mutate_json(rng, out[i], depth + 1)
        return out
    return [None, -1, 0, 3, 10**12, 1.5, "x", "", [], {}, True][int(rng.integers(11))]


def test_fuzzed_store_manifests_open_as_before_or_are_refused_in_one_line(tmp_path):
    ids, rows = make_ids(12), make_rows(12)
    root = tmp_path / "s"
    build(root, ids, rows)
    path = manifest_path(str(root))
    good = json.loads(open(path, encoding="utf-8").read())
    want = EmbeddingStore(root).get_many(ids)
    rng = np.random.default_rng(2)
    outcomes = {"same": 0, "refused": 0}
    for case in range(CASES):
        bad = _mutate_json(rng, good)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(bad, f)
        try:
            got = EmbeddingStore(root).get_many(ids)
        except (ValueError, RuntimeError, OSError) as e:
            assert _one_line(e, str(root)), f"case {case} ({json.dumps(bad)[:300]}): {e!r}"
            outcomes["refused"] += 1
            continue
        # A change that the reader accepts must not change a single value it returns.
        np.testing.assert_array_equal(got, want, err_msg=f"case {case}: {json.dumps(bad)[:300]}")
        outcomes["same"] += 1
    assert outcomes["refused"] and outcomes["same"]  # some changes are harmless (a fingerprint value), some not
