"""Faults in embedding stores: edited captions, truncated and bit-flipped shards.

A store is the most expensive thing a user makes (hours of LLM time at scale), so each fault must be
caught, named, and repaired by rerunning embed without losing the good shards.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flameclip.embed import EmbedConfig, caption_digests, run_embed
from flameclip.store import EmbeddingStore, StoreMismatchError, read_manifest
from flameclip.store.layout import shard_file
from flameclip.store.verify import verify_store

from .test_store import build, make_ids, make_rows, write_shards, writer

IDS = make_ids(20)  # shard_size 7: shards of 7, 7 and 6 samples
ROWS = make_rows(20)


def _digests(texts):
    return caption_digests(IDS, [texts], 7)


def test_edited_captions_are_refused_naming_the_samples(tmp_path):
    texts = [f"caption {i}" for i in range(20)]
    build(tmp_path / "s", IDS, ROWS, caption_digests=_digests(texts))
    writer(tmp_path / "s", IDS, caption_digests=_digests(texts))  # the same captions reopen
    edited = list(texts)
    edited[9] = "caption 9, edited"
    with pytest.raises(StoreMismatchError, match="captions changed") as e:
        writer(tmp_path / "s", IDS, caption_digests=_digests(edited))
    assert "'img-00007' to 'img-00013'" in str(e.value)  # the shard holding sample 9
    # Only the text matters, and only after the reference clean-up (a trailing full stop is added).
    assert _digests([t + "." for t in texts]) == _digests(texts)


def test_a_truncated_shard_is_set_aside_and_embedded_again(tmp_path, capsys):
    root = tmp_path / "s"
    build(root, IDS, ROWS)
    path = shard_file(str(root), 1, "data")
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(good[: len(good) // 2])  # a copy cut short
    w = writer(root, IDS)
    assert w.pending_shards() == [1] and not read_manifest(str(root))["complete"]
    assert "damaged shard(s) set aside" in capsys.readouterr().err
    assert open(path + ".damaged", "rb").read() == good[: len(good) // 2]  # kept, not deleted
    write_shards(w, ROWS)
    assert w.finalize()
    store = EmbeddingStore(root)
    for i in (0, 8, 13, 19):
        np.testing.assert_allclose(store.get(IDS[i]), ROWS[i].astype(np.float16).astype(np.float32))


def test_verify_finds_truncation_and_flipped_bits(tmp_path):
    root = tmp_path / "s"
    build(root, IDS, ROWS)
    checked, problems = verify_store(str(root), read_manifest(str(root)))
    assert checked == 3 and problems == []
    path = shard_file(str(root), 2, "data")
    blob = bytearray(open(path, "rb").read())
    blob[-5] ^= 0x40  # same size, one bit of one value
    open(path, "wb").write(bytes(blob))
    _, problems = verify_store(str(root), read_manifest(str(root)))
    assert len(problems) == 1 and "000002.npy" in problems[0] and "sha256" in problems[0]
    os.truncate(shard_file(str(root), 0, "data"), 100)
    r = subprocess.run([sys.executable, "-m", "flameclip.cli", "verify", str(root)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "000000.npy" in r.stdout and "000002.npy" in r.stdout and "damaged    2" in r.stdout


def test_an_int8_stores_scales_are_verified_and_checked_on_open(tmp_path, capsys):
    # The scales are half of what an int8 row means: flipped bits there change every value silently.
    root = tmp_path / "s"
    build(root, IDS, ROWS, dtype="int8")
    assert verify_store(str(root), read_manifest(str(root))) == (3, [])
    scale = shard_file(str(root), 1, "scale")
    blob = bytearray(open(scale, "rb").read())
    blob[-3] ^= 0x20
    open(scale, "wb").write(bytes(blob))
    _, problems = verify_store(str(root), read_manifest(str(root)))
    assert len(problems) == 1 and "000001.scale.npy" in problems[0] and "sha256" in problems[0]
    os.truncate(scale, 90)  # a cut copy: found from its size on every open for writing
    w = writer(root, IDS, dtype="int8")
    assert w.pending_shards() == [1] and "damaged shard(s) set aside" in capsys.readouterr().err
    write_shards(w, ROWS)
    assert w.finalize() and verify_store(str(root), read_manifest(str(root))) == (3, [])


def test_embed_refuses_a_store_of_edited_captions(tmp_path):
    caps = tmp_path / "captions.jsonl"
    rows = [{"id": "a", "raw": "a red circle"}, {"id": "b", "raw": "a blue square"}]
    caps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EmbedConfig(captions=str(caps), out=str(tmp_path / "store"), prompts={"raw": "single"})
    assert run_embed(cfg, progress=False).complete
    rows[1]["raw"] = "a green square"
    caps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(StoreMismatchError, match="captions changed.*'a' to 'b'"):
        run_embed(cfg, progress=False)


def test_a_runaway_caption_is_cut_to_the_default_cap_and_counted(tmp_path):
    from flameclip.text.facets import DEFAULT_MAX_TOKENS

    caps = tmp_path / "captions.jsonl"
    huge = "a red circle next to a blue square, " * 1400  # 50,400 characters
    caps.write_text(json.dumps({"id": "a", "raw": huge}) + "\n" + json.dumps({"id": "b", "raw": "a cat"}) + "\n")
    s = run_embed(EmbedConfig(captions=str(caps), out=str(tmp_path / "store"), prompts={"raw": "single"}),
                  progress=False)
    assert s.truncated == 1 and s.max_tokens == DEFAULT_MAX_TOKENS == 512
    assert s.tokens <= 2 * DEFAULT_MAX_TOKENS  # the LLM read at most the cap per caption, not 8,192
    assert EmbeddingStore(tmp_path / "store").fingerprint["max_tokens"] == 512


def test_a_truncated_shard_read_in_training_is_named(tmp_path):
    root = tmp_path / "s"
    build(root, IDS, ROWS)
    os.truncate(shard_file(str(root), 1, "data"), 300)
    store = EmbeddingStore(root)
    np.testing.assert_allclose(store.get(IDS[0]), ROWS[0].astype(np.float16).astype(np.float32))  # shard 0 is fine
    with pytest.raises(RuntimeError, match=r"000001.npy is unreadable .*flameclip verify"):
        store.get(IDS[8])


def test_a_lone_surrogate_in_a_caption_names_the_sample_and_column(tmp_path):
    from flameclip.embed import EmbedError

    caps = tmp_path / "captions.jsonl"
    caps.write_text(json.dumps({"id": "a", "raw": "fine"}) + "\n" + json.dumps({"id": "b", "raw": "bad \ud800 text"}) + "\n")
    with pytest.raises(EmbedError, match=r"sample 'b', column 'raw': .*lone surrogate"):
        run_embed(EmbedConfig(captions=str(caps), out=str(tmp_path / "store"), prompts={"raw": "single"}), progress=False)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_bad_byte_deep_in_a_captions_file_is_found_where_it_is(tmp_path, suffix):
    from flameclip.data.captions import CaptionsFileError, read_captions

    path = tmp_path / f"captions{suffix}"
    good = [f"x{i}" for i in range(20000)]
    if suffix == ".jsonl":
        body = b"".join(json.dumps({"id": i, "raw": "a caption of some length"}).encode() + b"\n" for i in good)
        bad = b'{"id": "b", "raw": "bad \xff byte"}\n'
    else:
        body = b"id,raw\n" + b"".join(f"{i},a caption of some length\n".encode() for i in good)
        bad = b"b,bad \xff byte\n"
    path.write_bytes(body + bad)
    where = len(body) + bad.index(b"\xff")  # counted here, independently of the reader
    line = 20001 if suffix == ".jsonl" else 20002
    with pytest.raises(CaptionsFileError, match=rf"line {line} is not UTF-8 text \(byte {where} of the file\)"):
        read_captions(str(path), ["raw"])


def test_a_truncated_gguf_is_named(tmp_path, monkeypatch):
    from flameclip.text.llm import LLMNotFoundError, load_llm, resolve

    monkeypatch.setenv("FLAMECLIP_CACHE", str(tmp_path / "cache"))
    whole = open(resolve("smollm2-135m").path, "rb").read()
    cut = tmp_path / "model.gguf"
    cut.write_bytes(whole[: len(whole) // 2])  # a download cut short
    with pytest.raises(LLMNotFoundError, match=r"model.gguf: not a readable GGUF model .*truncated") as e:
        load_llm(str(cut))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("hf/*"))  # no half-converted model left in the cache
