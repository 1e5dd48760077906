"""``flameclip embed`` end to end, with real subprocesses: resume after SIGKILL, torchrun, refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flameclip.data.captions import CaptionsFileError, read_captions
from flameclip.embed import EmbedConfig, EmbedError, run_embed
from flameclip.store import EmbeddingStore
from flameclip.text.facets import FacetEncoder

from .subprocess_kill import kill_when_exists

# The embed job end to end with the real packaged LLM (stores, resume after SIGKILL, torchrun).
# Other tiers still embed with it: the train, centring and evaluation fixtures build real stores.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["raw=single", "long=long7"]


def _records(n=10):
    lines = (ROOT / "examples" / "captions.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    path = tmp_path_factory.mktemp("caps") / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    return path


def _cmd(captions, out, *extra):
    return [sys.executable, "-m", "flameclip.cli", "embed", "--captions", str(captions), "--out", str(out),
            "--prompts", *PROMPTS, "--shard-size", "2", "--no-progress", *extra]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_store(captions, tmp_path_factory):
    """One uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("ref") / "store"
    r = subprocess.run(_cmd(captions, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "store complete" in r.stdout and "yes" in r.stdout
    return out


def test_store_holds_the_encoder_output(reference_store, captions, smollm2):
    store = EmbeddingStore(reference_store)
    recs = _records()
    assert len(store) == len(recs) and store.num_rows == 1 + 7
    enc = FacetEncoder(smollm2, route="separate")
    want = enc.encode([recs[3]["long"]], "long7")[0].numpy()
    got = store.get_column(recs[3]["id"], "long")
    # fp16 storage: relative error per row well under 1e-3.
    err = np.linalg.norm(got - want, axis=-1) / np.linalg.norm(want, axis=-1)
    assert err.max() < 1e-3


def test_resume_after_sigkill_equals_uninterrupted_run(reference_store, captions, tmp_path):
    out = tmp_path / "store"
    proc = subprocess.Popen(_cmd(captions, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when_exists(proc, out / "shards" / "000000.npy")
    written = sorted(p.name for p in (out / "shards").glob("*.npy"))
    assert 1 <= len(written) < 5, "the run must be killed part-way for this test to mean anything"
    assert not (out / "index").exists()
    # An incomplete store is refused by the reader with a hint to resume.
    with pytest.raises(RuntimeError, match="resume"):
        EmbeddingStore(out)
    r = subprocess.run(_cmd(captions, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # The resumed run embedded only what was missing ...
    embedded = int(next(line for line in r.stdout.splitlines() if line.startswith("embedded this run")).split()[-1])
    assert embedded == 10 - 2 * len([w for w in written if not w.endswith(".scale.npy")])
    # ... and the result is the same bytes as a run that was never interrupted.
    assert _tree_bytes(out) == _tree_bytes(reference_store)


def test_killed_twice_at_different_points_still_ends_as_the_uninterrupted_store(reference_store, captions, tmp_path):
    out = tmp_path / "store"
    for shard in ("000000", "000003"):  # after the first shard, then, resumed, after the fourth
        proc = subprocess.Popen(_cmd(captions, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        kill_when_exists(proc, out / "shards" / f"{shard}.npy")
        assert proc.returncode == -9 and not (out / "index").exists()
    assert len(list((out / "shards").glob("*.npy"))) < 5  # still part-way: the kills landed
    r = subprocess.run(_cmd(captions, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _tree_bytes(out) == _tree_bytes(reference_store)


def test_torchrun_two_processes_write_one_identical_store(reference_store, captions, tmp_path):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "flameclip.cli", *_cmd(captions, out)[3:]]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _tree_bytes(out) == _tree_bytes(reference_store)


def test_store_from_another_configuration_is_refused(reference_store, captions):
    r = subprocess.run(_cmd(captions, reference_store, "--layer", "-3"), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "layer" in err[0] and str(reference_store) in err[0]
    assert "Traceback" not in r.stderr


def test_empty_caption_names_the_sample(tmp_path):
    recs = _records(4)
    recs[2]["long"] = "  "
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cfg = EmbedConfig(captions=str(path), out=str(tmp_path / "s"), prompts={"raw": "single", "long": "long7"})
    with pytest.raises(EmbedError, match=f"sample '{recs[2]['id']}' has an empty 'long' caption"):
        run_embed(cfg, progress=False)
    assert not (tmp_path / "s").exists()  # nothing half-made is left behind


def test_skip_empty_leaves_the_sample_out(tmp_path):
    recs = _records(3)
    recs[1]["raw"] = ""
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cfg = EmbedConfig(captions=str(path), out=str(tmp_path / "s"), prompts={"raw": "single"}, skip_empty=True)
    summary = run_embed(cfg, progress=False)
    assert summary.skipped == 1 and summary.skipped_ids == [recs[1]["id"]]
    store = EmbeddingStore(tmp_path / "s")
    assert recs[1]["id"] not in store and recs[0]["id"] in store and len(store) == 2


def test_captions_formats_agree(tmp_path):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = _records(5)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "c.parquet")
    tables = [read_captions(tmp_path / f"c.{ext}", ["raw", "long"]) for ext in ("jsonl", "csv", "parquet")]
    for t in tables[1:]:
        assert t.ids == tables[0].ids and t.columns == tables[0].columns
    assert tables[0].ids == [r["id"] for r in recs]


def test_captions_file_errors_are_one_line_and_specific(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "long": "x"}\n{"id": "a", "long": "y"}\n', encoding="utf-8")
    with pytest.raises(CaptionsFileError, match="id 'a' appears twice"):
        read_captions(p, ["long"])
    p.write_text('{"id": "a", "long": "x"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(CaptionsFileError, match="record 2 \\(id 'b'\\) has no column 'long'"):
        read_captions(p, ["long"])
    with pytest.raises(CaptionsFileError, match="not found"):
        read_captions(tmp_path / "missing.jsonl", ["long"])


def test_cli_reports_bad_input_in_one_line(tmp_path):
    r = subprocess.run(_cmd(tmp_path / "nope.jsonl", tmp_path / "s"), env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_causal_route_is_recorded_and_exact_routes_are_not(tmp_path):
    from flameclip.store import EmbeddingStore

    caps = tmp_path / "c.jsonl"
    caps.write_text('{"id": "a", "caption": "A red cup on a table."}\n{"id": "b", "caption": "Two dogs."}\n')
    fps = {}
    for route in ("fda", "separate", "causal"):
        run_embed(EmbedConfig(captions=str(caps), out=str(tmp_path / route), prompts={"caption": "short3"},
                              route=route), progress=False)
        fps[route] = EmbeddingStore(tmp_path / route).fingerprint
    assert fps["fda"] == fps["separate"] and "route" not in fps["fda"]
    assert fps["causal"]["route"] == "causal"


def test_a_checkpoint_from_a_causal_store_encodes_queries_the_same_way(tmp_path):
    # Queries must go through the route the training texts went through, and never share cached
    # embeddings with the exact routes.
    from flameclip.inference import load
    from flameclip.model import FlameModel, ModelConfig
    from flameclip.text.llm import resolve

    rec = {"llm": "smollm2-135m", "weights_sha256": resolve("smollm2-135m").weights_sha256, "layer": 29,
           "hidden_size": 576}
    cache = tmp_path / "cache"
    states = {}
    for name, extra in (("exact", {}), ("causal", {"route": "causal"})):
        cfg = ModelConfig(vision="custom", image_size=32, patch_size=8, vision_width=32, vision_depth=1,
                          vision_heads=2, text_dim=576, llm={**rec, **extra})
        FlameModel(cfg).save_pretrained(str(tmp_path / name))
        m = load(tmp_path / name, device="cpu", text_cache=cache)
        states[name] = m.llm_states(["A red cup on a table."], mode="short3")[0]
        assert m._facet_encoder().route == ("causal" if extra else "fda")
    assert torch.allclose(states["exact"][0], states["causal"][0], atol=1e-4)  # facet 1 sees the same
    assert not torch.allclose(states["exact"][1], states["causal"][1], atol=1e-2)


def test_repeated_captions_are_encoded_once_and_stored_like_the_others(tmp_path):
    recs = _records(5)
    recs[3]["long"] = recs[1]["long"]  # an alt-text repeated across samples, as in web data
    recs[4]["raw"] = recs[0]["raw"]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    cfg = EmbedConfig(captions=str(path), out=str(tmp_path / "dup"), prompts={"raw": "single", "long": "long7"},
                      shard_size=8)
    summary = run_embed(cfg, progress=False)
    assert summary.repeats == 2 and summary.embedded == 5
    # The reference: the same samples without any repeat, each in a store of its own texts.
    unique = [r for i, r in enumerate(recs) if i not in (3, 4)]
    ref_path = tmp_path / "u.jsonl"
    ref_path.write_text("".join(json.dumps(r) + "\n" for r in unique), encoding="utf-8")
    run_embed(EmbedConfig(captions=str(ref_path), out=str(tmp_path / "ref"), prompts=cfg.prompts, shard_size=8),
              progress=False)
    dup, ref = EmbeddingStore(tmp_path / "dup"), EmbeddingStore(tmp_path / "ref")
    assert np.array_equal(dup.get_column(recs[3]["id"], "long"), ref.get_column(recs[1]["id"], "long"))
    assert np.array_equal(dup.get_column(recs[4]["id"], "raw"), ref.get_column(recs[0]["id"], "raw"))
    # The samples' other column is their own text, not a copy.
    assert not np.array_equal(dup.get_column(recs[3]["id"], "raw"), dup.get_column(recs[1]["id"], "raw"))
    for r in unique:
        assert np.array_equal(dup.get(r["id"]), ref.get(r["id"]))


def test_text_cache_encodes_only_edited_captions_and_gives_the_same_store(tmp_path):
    recs = _records(6)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    prompts = {"raw": "single", "long": "long7"}
    cache = tmp_path / "cache"
    first = run_embed(EmbedConfig(captions=str(path), out=str(tmp_path / "a"), prompts=prompts, shard_size=4,
                                  text_cache=str(cache)), progress=False)
    assert first.cached == 0
    recs[2]["long"] = recs[2]["long"] + " A second look shows a small red kite."
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    second = run_embed(EmbedConfig(captions=str(path), out=str(tmp_path / "b"), prompts=prompts, shard_size=4,
                                   text_cache=str(cache)), progress=False)
    assert second.cached == 2 * 6 - 1 and second.tokens < first.tokens / 4
    fresh = run_embed(EmbedConfig(captions=str(path), out=str(tmp_path / "c"), prompts=prompts, shard_size=4),
                      progress=False)
    assert fresh.cached == 0
    b, c = EmbeddingStore(tmp_path / "b"), EmbeddingStore(tmp_path / "c")
    for r in recs:  # the cached rows are the states a fresh run computes (to the store's fp16)
        np.testing.assert_allclose(b.get(r["id"]), c.get(r["id"]), rtol=1e-3, atol=1e-3)
    assert not np.allclose(b.get_column(recs[2]["id"], "long"), EmbeddingStore(tmp_path / "a").get_column(recs[2]["id"], "long"))
    # Another prompt set, or another token cap, is another key: nothing is reused across them.
    other = run_embed(EmbedConfig(captions=str(path), out=str(tmp_path / "d"), prompts=prompts, shard_size=4,
                                  max_tokens=256, text_cache=str(cache)), progress=False)
    assert other.cached == 0
