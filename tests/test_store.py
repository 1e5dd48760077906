"""flameclip.store: round trips, lookups, resume, several ranks, and every refusal.

No LLM is needed: the "embeddings" are seeded random float32 arrays.
"""

import json
import os

import numpy as np
import pytest

from flameclip.store import EmbeddingStore, StoreMismatchError, StoreWriter, compare_fingerprints, read_manifest
from flameclip.store import index as index_module

COLUMNS = [
    {"name": "raw", "k": 1, "prompt_set": {"name": "single", "sha": "aa"}},
    {"name": "short", "k": 3, "prompt_set": {"name": "short3", "sha": "bb"}},
    {"name": "long", "k": 2, "prompt_set": {"name": "long2", "sha": "cc"}},
]
R, D = 6, 8
FINGERPRINT = {"llm": {"name": "tiny", "weights_sha256": "0123"}, "layer": 29, "pool": "last"}


def make_ids(n):
    return [f"img-{i:05d}" for i in range(n)]


def make_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, R, D)).astype(np.float32)
    rows *= rng.uniform(0.01, 10.0, size=(n, R, 1)).astype(np.float32)  # rows of very different norms
    rows[0, 2] = 0.0  # an all-zero row (int8 scale must not divide by zero)
    return rows


def writer(root, ids, **kw):
    args = dict(fingerprint=FINGERPRINT, columns=COLUMNS, dim=D, ids=ids, shard_size=7, dtype="fp16")
    args.update(kw)
    return StoreWriter(root, **args)


def write_shards(w, rows, shards=None):
    for j in w.pending_shards() if shards is None else shards:
        start, stop = w.shard_range(j)
        w.write_shard(j, rows[start:stop])


def build(root, ids, rows, **kw):
    w = writer(root, ids, **kw)
    write_shards(w, rows)
    assert w.finalize()
    return w


def tree(root):
    """relative path -> bytes of every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_round_trip(tmp_path, dtype):
    ids, rows = make_ids(30), make_rows(30)
    build(tmp_path / "s", ids, rows, dtype=dtype)
    store = EmbeddingStore(tmp_path / "s", expect_fingerprint=FINGERPRINT)
    assert len(store) == 30 and store.num_rows == R and store.dim == D and store.dtype == dtype
    assert store.columns == {"raw": (0, 1), "short": (1, 4), "long": (4, 6)}
    assert list(store.ids()) == ids
    for i, sample_id in enumerate(ids):
        got, want = store.get(sample_id), rows[i]
        assert got.dtype == np.float32 and got.shape == (R, D)
        if dtype == "fp32":
            np.testing.assert_array_equal(got, want)
        elif dtype == "fp16":
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-7 * np.abs(want).max())
        else:
            scale = np.abs(want).max(axis=1) / 127
            assert np.all(np.abs(got - want).max(axis=1) <= scale / 2 + 1e-6 * (scale + 1))
        for name, (a, b) in store.columns.items():
            np.testing.assert_array_equal(store.get_column(sample_id, name), got[a:b])
    np.testing.assert_array_equal(store.get_many([ids[3], ids[0]]), np.stack([store.get(ids[3]), store.get(ids[0])]))
    assert store.nbytes() == sum(p.stat().st_size for p in (tmp_path / "s" / "shards").iterdir())
    with pytest.raises(KeyError, match="column 'nope'"):
        store.get_column(ids[0], "nope")


def test_int8_is_smaller_and_fp16_overflow_is_refused(tmp_path):
    ids, rows = make_ids(20), make_rows(20)
    sizes = {}
    for dtype in ("fp32", "int8"):
        build(tmp_path / dtype, ids, rows, dtype=dtype)
        sizes[dtype] = EmbeddingStore(tmp_path / dtype).nbytes()
    assert sizes["int8"] < sizes["fp32"]
    w = writer(tmp_path / "big", ids)
    big = rows[:7].copy()
    big[4, 1, 1] = 1e6
    with pytest.raises(ValueError, match="img-00004.*fp16"):
        w.write_shard(0, big)


# --- lookup --------------------------------------------------------------------------------------


def test_lookup_many_shards(tmp_path):
    n = 3000
    ids = [f"sample/{(i * 7919) % 100003}" for i in range(n)]
    rows = np.random.default_rng(1).standard_normal((n, R, D)).astype(np.float32)
    build(tmp_path / "s", ids, rows, dtype="fp32", shard_size=64)
    store = EmbeddingStore(tmp_path / "s")
    assert store.num_shards == 47
    for i in range(n):
        np.testing.assert_array_equal(store.get(ids[i]), rows[i])
    assert ids[5] in store and "sample/absent" not in store and 5 not in store
    with pytest.raises(KeyError, match="'sample/absent' is not in store"):
        store.get("sample/absent")


@pytest.mark.parametrize("index_format", ["id arrays", "ids.json only (older stores)"])
def test_hash_collisions_never_return_the_wrong_row(tmp_path, monkeypatch, index_format):
    # Every id hashes to one of two values: buckets and hashes collide everywhere, so only the
    # confirmation against the stored id (the index's id bytes, or an older store's ids.json) can
    # pick the right row.
    monkeypatch.setattr(index_module, "hash_bytes", lambda b: 2**63 + (len(b) % 2))
    ids = [f"x{'y' * (i % 3)}-{i}" for i in range(40)]
    rows = make_rows(40)
    build(tmp_path / "s", ids, rows, dtype="fp32", shard_size=7)
    if index_format != "id arrays":
        for name in index_module.ID_ARRAYS:
            (tmp_path / "s" / "index" / f"{name}.npy").unlink()
    store = EmbeddingStore(tmp_path / "s")
    assert (store._index.id_bytes is None) == (index_format != "id arrays")
    for i, sample_id in enumerate(ids):
        np.testing.assert_array_equal(store.get(sample_id), rows[i])
    assert "x-999" not in store


def test_index_is_sorted_and_complete(tmp_path):
    ids = make_ids(100)
    build(tmp_path / "s", ids, make_rows(100), shard_size=9)
    idx = {name: np.load(tmp_path / "s" / "index" / f"{name}.npy") for name in ("offsets", "hashes", "shard", "row")}
    nb = len(idx["offsets"]) - 1
    assert nb == 128 and idx["offsets"][-1] == 100
    buckets = idx["hashes"] & np.uint64(nb - 1)
    assert np.all(np.diff(buckets.astype(np.int64)) >= 0)
    assert sorted((idx["shard"] * 9 + idx["row"]).tolist()) == list(range(100))


# --- resume and ranks ----------------------------------------------------------------------------


def test_resume_is_byte_identical(tmp_path):
    ids, rows = make_ids(50), make_rows(50)
    build(tmp_path / "once", ids, rows, dtype="int8")

    root = tmp_path / "resumed"
    first = writer(root, ids, dtype="int8")
    write_shards(first, rows, shards=[0, 2, 3])
    assert first.finalize() is False
    with pytest.raises(RuntimeError, match=r"incomplete \(3 of 8 shards\).*resume"):
        EmbeddingStore(root)
    del first
    # What a run killed mid-write leaves behind: temporary files, and side files of a shard
    # whose .npy never got renamed into place (so the shard does not count as written).
    (root / "shards" / ".tmp-deadbeef0000-000005.npy").write_bytes(b"half a shard")
    (root / "shards" / "000005.ids.json").write_text('["garbage"]')
    (root / ".tmp-deadbeef0001-manifest.json").write_text("{")

    second = writer(root, ids, dtype="int8")
    assert second.pending_shards() == [1, 4, 5, 6, 7]
    write_shards(second, rows)
    assert second.missing_shards() == []
    assert second.finalize() is True
    assert read_manifest(root)["complete"] is True
    assert tree(root) == tree(tmp_path / "once")

    # A writer on the finished store has nothing to do, and finalizing again changes nothing.
    again = writer(root, ids, dtype="int8")
    assert again.pending_shards() == [] and again.finalize() is True
    assert tree(root) == tree(tmp_path / "once")


def test_two_ranks_are_byte_identical_to_one(tmp_path):
    ids, rows = make_ids(45), make_rows(45)
    build(tmp_path / "one", ids, rows)

    root = tmp_path / "two"
    rank0 = writer(root, ids, rank=0, world_size=2)
    rank1 = writer(root, ids, rank=1, world_size=2)
    assert rank0.pending_shards() == [0, 2, 4, 6] and rank1.pending_shards() == [1, 3, 5]
    write_shards(rank0, rows)
    assert rank0.finalize() is False  # rank 1's shards are still missing
    write_shards(rank1, rows)
    assert rank1.finalize() is True and rank0.finalize() is True
    assert tree(root) == tree(tmp_path / "one")


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, key",
    [
        ({"fingerprint": {**FINGERPRINT, "layer": 28}}, "layer: store has 29, this run asks for 28"),
        ({"fingerprint": {**FINGERPRINT, "llm": {"name": "other", "weights_sha256": "0123"}}}, "llm.name"),
        ({"dtype": "int8"}, "dtype"),
        ({"shard_size": 8}, "shard_size"),
        ({"columns": COLUMNS[:2]}, "columns"),
        ({"ids": make_ids(21)}, "ids/captions file changed"),
    ],
)
def test_reopening_with_another_configuration_is_refused(tmp_path, change, key):
    w = writer(tmp_path / "s", make_ids(20))
    write_shards(w, make_rows(20), shards=[0])
    args = {"ids": make_ids(20), **change}
    with pytest.raises(StoreMismatchError) as err:
        writer(tmp_path / "s", **args)
    message = str(err.value)
    assert "\n" not in message and key in message and "another configuration" in message


def test_reader_checks_the_expected_fingerprint(tmp_path):
    build(tmp_path / "s", make_ids(10), make_rows(10))
    other = {**FINGERPRINT, "layer": 28, "extra": True}
    with pytest.raises(StoreMismatchError) as err:
        EmbeddingStore(tmp_path / "s", expect_fingerprint=other)
    message = str(err.value)
    assert "\n" not in message and "layer: store has 29, this run asks for 28" in message and "extra" in message


def test_compare_fingerprints_flattens_nested_keys():
    a = {"llm": {"name": "a", "layer": 29}, "prompts": ["x"]}
    b = {"llm": {"name": "a", "layer": 28, "dtype": "bf16"}, "prompts": ("x",)}
    assert compare_fingerprints(a, b) == [
        "llm.layer: store has 29, this run asks for 28",
        'llm.dtype: store has none, this run asks for "bf16"',
    ]
    assert compare_fingerprints(a, a) == []


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"'img-00003' appears twice: at positions 3 and 9"):
        writer(tmp_path / "dup", make_ids(9) + ["img-00003"])
    w = writer(tmp_path / "s", make_ids(20))
    rows = make_rows(20)[:7].copy()
    rows[5, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"shard 0: sample 'img-00005' has a NaN"):
        w.write_shard(0, rows)
    with pytest.raises(ValueError, match="shape"):
        w.write_shard(0, rows[:6])
    assert w.missing_shards() == [0, 1, 2]  # nothing was written by the failed calls
    with pytest.raises(FileNotFoundError, match="not an embedding store"):
        EmbeddingStore(tmp_path / "nothing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        writer(tmp_path / "busy", make_ids(3))


def test_manifest_layout(tmp_path):
    build(tmp_path / "s", make_ids(15), make_rows(15), dtype="int8")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["format"] == "flameclip-store/1" and m["num_shards"] == 3 and m["complete"] is True
    assert m["columns"][1]["prompt_set"] == {"name": "short3", "sha": "bb"}
    names = sorted(os.listdir(tmp_path / "s" / "shards"))
    assert names[:4] == ["000000.ids.json", "000000.npy", "000000.scale.npy", "000000.sha256"] and len(names) == 12
    assert np.load(tmp_path / "s" / "shards" / "000002.npy").shape == (1, R, D)
    assert json.loads((tmp_path / "s" / "shards" / "000002.ids.json").read_text()) == ["img-00014"]


def test_store_pickles_without_its_memory_maps(tmp_path):
    import pickle

    ids, rows = make_ids(10), make_rows(10)
    build(tmp_path / "s", ids, rows, dtype="fp32")
    store = EmbeddingStore(tmp_path / "s")
    store.get(ids[0])  # opens a shard
    blob = pickle.dumps(store)
    assert len(blob) < 1000
    np.testing.assert_array_equal(pickle.loads(blob).get(ids[9]), rows[9])


def test_reads_stay_right_when_open_files_are_evicted(tmp_path, monkeypatch):
    # Room for one int8 shard's two files at a time: nearly every read closes one and opens another.
    from flameclip.store import reader as reader_module

    monkeypatch.setattr(reader_module, "_open_fd_budget", lambda: 2)
    ids, rows = make_ids(60), make_rows(60)
    build(tmp_path / "s", ids, rows, dtype="int8", shard_size=7)
    store = EmbeddingStore(tmp_path / "s")
    order = np.random.default_rng(0).permutation(60).tolist() * 2
    for i in order:
        half_step = np.abs(rows[i]).max(axis=-1, keepdims=True) / 127 / 2  # int8's error bound, per row
        assert np.all(np.abs(store.get(ids[i]) - rows[i]) <= half_step * 1.001 + 1e-7), ids[i]
    assert len(store._fds.items) == 1
    store.close()
    assert not store._fds.items
