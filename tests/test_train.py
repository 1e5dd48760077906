"""The training loop on real images and a real SmolLM2 store: learning, resume, torchrun, baseline."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flameclip.config import TrainConfig, load_config
from flameclip.data.images import DataError, EpochBatchSampler
from flameclip.embed import EmbedConfig, run_embed
from flameclip.model import FlameModel
from flameclip.train import train

from .shapes_data import make_shapes
from .subprocess_kill import kill_when_exists

TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_depth=2",
        "model.vision_heads=2", "workers=0", "precision=fp32", "warmup_steps=2", "log_every=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    d = make_shapes(folder, n=40, size=48, corrupt=1)
    run_embed(EmbedConfig(captions=str(d["captions"]), out=str(folder / "store"),
                          prompts={"raw": "single", "short": "short3"}), progress=False)
    d["store"] = folder / "store"
    return d


def cfg_for(data, out, *extra):
    return load_config(None, [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={out}",
                              "batch_size=8", "positives=2", *TINY, *extra])


def initial_weights(checkpoint, seed: int = 0):
    """The weights a run with this checkpoint's config starts from (train seeds, then builds)."""
    cfg = FlameModel.from_pretrained(checkpoint).cfg
    torch.manual_seed(seed)
    return FlameModel(cfg).state_dict()


def test_initial_weights_are_what_training_starts_from(data, tmp_path):
    # With lr = 0 nothing moves, so the checkpoint must equal initial_weights(): the other tests'
    # "the weights moved" checks compare against the true starting point.
    res = train(cfg_for(data, tmp_path / "r", "max_steps=1", "lr=0", "save_every=100"), progress=False)
    init, ckpt = initial_weights(res.checkpoint), FlameModel.from_pretrained(res.checkpoint).state_dict()
    assert all(torch.equal(init[k], ckpt[k]) for k in init)


def _metrics(out: Path):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_flame_training_learns_and_writes_a_run_folder(data, tmp_path):
    out = tmp_path / "run"
    res = train(cfg_for(data, out, "epochs=6", "lr=2e-3", "save_every=100"), progress=False)
    rows = _metrics(out)
    assert res.steps == 6 * (40 // 8) == len(rows)
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    assert last < 0.7 * first, (first, last)
    for name in ("config.toml", "metrics.csv", "loss_curve.png", "tensorboard"):
        assert (out / name).exists(), name
    # The corrupt image was skipped, counted once, and the batches kept their size.
    assert res.skipped_images == 1
    # The resolved config reloads to the same settings.
    again = load_config(str(out / "config.toml"))
    assert again.model.vision_width == 32 and again.positives == 2 and again.store == str(data["store"])
    # The checkpoint is a loadable model that records the LLM it expects, not the LLM itself.
    m = FlameModel.from_pretrained(res.checkpoint)
    assert m.cfg.llm["llm"] == "smollm2-135m" and len(m.cfg.llm["weights_sha256"]) == 64
    assert not any(p.suffix in (".bin", ".pt") and p.name != "trainer_state.pt" for p in res.checkpoint.iterdir())


def _default_sigint():
    # A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler:
    # give the child the default disposition, as a terminal would, whatever runs the tests.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_cli(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "flameclip.cli", "train", "--no-progress", *args],
                            env=env or dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=_default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _overrides(data, out, *extra):
    return [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={out}", "batch_size=8",
            "positives=2", *TINY, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("kills", [(4,), (2, 10)], ids=["once", "twice"])  # twice: resumed in between
def test_killed_and_resumed_run_ends_with_the_same_weights(data, tmp_path, kills):
    common = ["epochs=3", "save_every=2", "keep_checkpoints=10"]
    full = tmp_path / "full"
    p = _run_cli(_overrides(data, full, *common))
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]

    cut = tmp_path / "cut"
    for n, step in enumerate(kills):
        p = _run_cli(_overrides(data, cut, *common, *(["resume=latest"] if n else [])))
        ckpt = cut / "checkpoints" / f"step-{step:07d}"
        kill_when_exists(p, ckpt)
        assert p.returncode == -9
        assert ckpt.exists() and not (cut / "checkpoints" / "step-0000015").exists(), "the kill must land mid-run"

    p = _run_cli(_overrides(data, cut, *common, "resume=latest"))
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    a = load_file(full / "checkpoints" / "step-0000015" / "model.safetensors")
    b = load_file(cut / "checkpoints" / "step-0000015" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The metrics log of the resumed run has each step once.
    steps = [int(r["step"]) for r in _metrics(cut)]
    assert steps == sorted(set(steps)) and steps[-1] == 15


@pytest.mark.slow
def test_ctrl_c_mid_run_keeps_the_steps_done_and_resumes_to_the_same_weights(data, tmp_path):
    common = ["epochs=40", "save_every=50", "keep_checkpoints=10"]  # 200 steps
    full = tmp_path / "full"
    p = _run_cli(_overrides(data, full, *common))
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]

    cut = tmp_path / "cut"
    p = _run_cli(_overrides(data, cut, *common))
    deadline = time.time() + 600

    def logged_steps() -> int:
        try:
            return len((cut / "metrics.csv").read_text().splitlines()) - 1
        except OSError:
            return 0

    # Past the step-50 checkpoint and a few steps into the next stretch (log_every=1), well before 200.
    while logged_steps() < 55 and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130, "the signal must land mid-run"
    lines = [ln for ln in p.stderr.read().splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "resume=latest" in lines[0], lines
    kept = sorted(int(c.name.split("-")[1]) for c in (cut / "checkpoints").glob("step-*"))
    assert kept[0] == 50 and 55 <= kept[-1] < 200, kept  # the steps done since step 50, saved on the way out

    p = _run_cli(_overrides(data, cut, *common, "resume=latest"))
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    a = load_file(full / "checkpoints" / "step-0000200" / "model.safetensors")
    b = load_file(cut / "checkpoints" / "step-0000200" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the interrupted run must end where the whole one does"
    steps = [int(r["step"]) for r in _metrics(cut)]
    assert steps == sorted(set(steps)) and steps[-1] == 200


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(data, tmp_path):
    # One process with batch 8 and two with batch 4 see the same global batches, so after the same
    # steps the weights must agree (up to float summation order).
    one = tmp_path / "one"
    res = train(cfg_for(data, one, "max_steps=3", "save_every=100", "lr=1e-3"), progress=False)
    two = tmp_path / "two"
    args = _overrides(data, two, "max_steps=3", "save_every=100", "lr=1e-3")
    args[args.index("batch_size=8")] = "batch_size=4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "flameclip.cli", "train", "--no-progress", *args]
    r = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(res.checkpoint / "model.safetensors")
    b = load_file(two / "checkpoints" / "step-0000003" / "model.safetensors")
    worst = max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-8)).item() for k in a)
    assert worst < 1e-3
    # ... and they did move away from the initial weights (so agreeing is not trivial).
    assert any(not torch.allclose(initial_weights(res.checkpoint)[k], a[k]) for k in a)
    la = [float(r["loss"]) for r in _metrics(one)]
    lb = [float(r["loss"]) for r in _metrics(two)]
    assert la == pytest.approx(lb, rel=1e-4)


def test_clip_baseline_trains_from_the_same_loop(data, tmp_path):
    out = tmp_path / "clip"
    cfg = load_config(None, [f"train_manifest={data['manifest']}", f"captions={data['captions']}", f"out={out}",
                             "batch_size=8", 'text_columns=["raw","short"]', "model.text_tower=clip",
                             "model.embed_dim=32", "model.clip_width=32", "model.clip_layers=1", "model.clip_heads=2",
                             "loss=softmax", "epochs=4", "lr=2e-3", "save_every=100", *TINY])
    res = train(cfg, progress=False)
    rows = _metrics(out)
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    m = FlameModel.from_pretrained(res.checkpoint)
    assert m.cfg.text_tower == "clip" and m.text_encoder is not None


def test_ids_missing_from_the_store_are_listed(data, tmp_path):
    extra = tmp_path / "manifest.jsonl"
    extra.write_text(Path(data["manifest"]).read_text() + '{"id": "ghost1", "image": "x.png"}\n'
                     '{"id": "ghost2", "image": "y.png"}\n')
    cfg = cfg_for(data, tmp_path / "r")
    cfg.train_manifest, cfg.image_root = str(extra), str(Path(data["manifest"]).parent)
    with pytest.raises(DataError, match="2 image id\\(s\\) are not in the embedding store .*ghost1, ghost2"):
        train(cfg, progress=False)


def test_images_without_text_can_be_left_out_and_counted(data, tmp_path, capsys):
    from flameclip.train import build_dataset

    extra = tmp_path / "manifest.jsonl"
    extra.write_text(Path(data["manifest"]).read_text() + '{"id": "ghost1", "image": "x.png"}\n')
    cfg = cfg_for(data, tmp_path / "r", "skip_missing_text=true")
    cfg.image_root = str(Path(data["manifest"]).parent)
    with_ghost = build_dataset(cfg, str(extra), train=True)
    plain = build_dataset(cfg, str(data["manifest"]), train=True)
    assert [r.id for r in with_ghost.records] == [r.id for r in plain.records]
    assert "1 of 41 images have no text and are left out" in capsys.readouterr().out


def test_a_fresh_run_refuses_to_overwrite_checkpoints(data, tmp_path):
    out = tmp_path / "run"
    train(cfg_for(data, out, "max_steps=1", "save_every=1"), progress=False)
    with pytest.raises(DataError, match="resume=latest"):
        train(cfg_for(data, out, "max_steps=1", "save_every=1"), progress=False)


def test_sampler_splits_global_batches_across_ranks():
    one = list(EpochBatchSampler(20, 8, epoch=0, seed=3))
    r0 = list(EpochBatchSampler(20, 4, epoch=0, seed=3, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(20, 4, epoch=0, seed=3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == one and len(one) == 2
    assert list(EpochBatchSampler(20, 8, epoch=0, seed=3, start_batch=1)) == one[1:]
    assert list(EpochBatchSampler(20, 8, epoch=1, seed=3)) != one


def test_sampler_over_several_epochs_is_the_epochs_one_after_another():
    # One loader serves a whole run; it must give the batches that one loader per epoch gave,
    # from a resume point inside an epoch, with each epoch cut to the batches a step uses.
    per_epoch = [list(EpochBatchSampler(23, 4, epoch=e, seed=5))[:3] for e in range(2, 6)]
    run = list(EpochBatchSampler(23, 4, epoch=2, seed=5, start_batch=1, epochs=4, batches_per_epoch=3))
    assert run == per_epoch[0][1:] + per_epoch[1] + per_epoch[2] + per_epoch[3]
    assert len(EpochBatchSampler(23, 4, epoch=2, seed=5, start_batch=1, epochs=4, batches_per_epoch=3)) == 11
    assert {key[0] for batch in run for key in batch} == {2, 3, 4, 5}


@pytest.mark.parametrize("n, batch, accum, world, step, total", [
    (23, 4, 1, 1, 0, 10), (23, 2, 3, 1, 4, 9), (40, 3, 2, 2, 7, 20), (40, 3, 1, 3, 5, 11), (7, 1, 2, 1, 3, 3)])
def test_one_loader_gives_the_batches_of_one_loader_per_epoch(n, batch, accum, world, step, total):
    # The scheme before: a sampler per epoch, the first one starting inside its epoch on resume,
    # each step taking `accum` batches, an epoch ending after steps_per_epoch steps.
    from flameclip.train import Dist, loader_for

    cfg = TrainConfig(batch_size=batch, grad_accum=accum, seed=7, workers=0)
    per_epoch = n // (batch * world * accum)
    for rank in range(world):
        want, it, epoch = [], None, None
        for s in range(step, total):
            if s // per_epoch != epoch:
                epoch = s // per_epoch
                start = (s % per_epoch) * accum if it is None else 0
                it = iter(EpochBatchSampler(n, batch, epoch, 7, rank, world, start))
            want += [next(it) for _ in range(accum)]
        sampler = loader_for(list(range(n)), cfg, Dist(rank, world, rank), step, total, per_epoch).batch_sampler
        assert list(sampler)[: len(want)] == want


def test_config_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lr = 1e-3\nbetas = [0.9, 0.98]\n[model]\nvision_depth = 3\n')
    cfg = load_config(str(p), ["model.vision_depth=5", "resume=latest", "lr=2"])
    assert cfg.model.vision_depth == 5 and cfg.resume == "latest" and cfg.betas == (0.9, 0.98)
    assert cfg.lr == 2.0 and isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="unknown setting 'lrr'"):
        load_config(str(p), ["lrr=1"])


def test_webdataset_shards_train_exactly_like_the_manifest(data, tmp_path):
    import webdataset as wds

    folder = Path(data["manifest"]).parent
    ids = sorted(p.stem for p in (folder / "images").glob("*.png"))
    for shard, chunk in enumerate((ids[:25], ids[25:])):
        with wds.TarWriter(str(tmp_path / f"part-{shard:03d}.tar")) as sink:
            for sid in chunk:
                sink.write({"__key__": sid, "png": (folder / "images" / f"{sid}.png").read_bytes(), "txt": "x"})
    a = train(cfg_for(data, tmp_path / "m", "max_steps=4", "save_every=100"), progress=False)
    cfg = cfg_for(data, tmp_path / "w", "max_steps=4", "save_every=100")
    cfg.train_manifest = str(tmp_path / "part-{000..001}.tar")
    b = train(cfg, progress=False)
    assert [r["loss"] for r in _metrics(tmp_path / "m")] == [r["loss"] for r in _metrics(tmp_path / "w")]
    assert a.skipped_images == b.skipped_images == 1


def test_grad_accumulation_and_bf16_autocast(data, tmp_path):
    cfg = cfg_for(data, tmp_path / "acc", "grad_accum=2", "precision=bf16", "epochs=1", "save_every=100")
    cfg.batch_size = 4
    res = train(cfg, progress=False)
    # 40 images, 4 per micro-batch, 2 micro-batches per step: 5 optimiser steps.
    assert res.steps == 5 and len(_metrics(tmp_path / "acc")) == 5
    assert torch.isfinite(torch.tensor(res.final_loss))
    # Accumulating two micro-batches is not one batch of 8 (negatives stay within a micro-batch),
    # but it must still update the weights.
    init = initial_weights(res.checkpoint)
    trained = FlameModel.from_pretrained(res.checkpoint).state_dict()
    assert any(not torch.allclose(init[k], trained[k]) for k in init)


def test_text_centring_uses_the_store_mean_and_is_saved(data, tmp_path):
    import numpy as np

    from flameclip.store import EmbeddingStore

    res = train(cfg_for(data, tmp_path / "c", "max_steps=1", "save_every=100", "model.text_center=true"),
                progress=False)
    store = EmbeddingStore(data["store"])
    rows = store.get_many(list(store.ids()))
    want = torch.from_numpy(rows.reshape(-1, rows.shape[-1]).mean(axis=0))
    m = FlameModel.from_pretrained(res.checkpoint)
    assert torch.allclose(m.text_mean, want, atol=1e-4)
    # encode_text subtracts it before normalising.
    x = torch.from_numpy(np.ascontiguousarray(rows[:2, 0]))
    expected = torch.nn.functional.normalize(x - want, dim=-1)
    assert torch.allclose(m.encode_text(x), expected, atol=1e-4)


def test_train_leaves_the_callers_config_as_given(data, tmp_path):
    """What the store decides (text width, LLM identity, facets) goes into the run's own copy."""
    import copy

    cfg = cfg_for(data, tmp_path / "run", "max_steps=2", "save_every=100", 'model.text_center="prompt"',
                  "model.text_dim=7")
    before = copy.deepcopy(cfg.to_dict())
    res = train(cfg, progress=False)
    assert cfg.to_dict() == before
    saved = FlameModel.from_pretrained(str(res.checkpoint)).cfg
    assert saved.text_dim != 7 and saved.llm and saved.text_facets  # the run itself did fill them in


def test_sampler_keeps_groups_in_one_batch_and_singletons_shuffle_as_before():
    plain = list(EpochBatchSampler(20, 8, epoch=0, seed=3))
    assert list(EpochBatchSampler(20, 8, epoch=0, seed=3, units=[[i] for i in range(20)])) == plain
    units = [[0, 5, 9, 13], [1, 2, 3, 4]] + [[i] for i in range(20) if i not in (0, 5, 9, 13, 1, 2, 3, 4)]
    for epoch in range(6):
        flat = [i for _, i in (k for b in EpochBatchSampler(20, 20, epoch=epoch, seed=3, units=units) for k in b)]
        for u in units[:2]:  # one global batch per epoch: each group's members follow one another
            at = flat.index(u[0])
            assert flat[at:at + 4] == u
    # Two processes still split each global batch of the one-process run.
    one = list(EpochBatchSampler(20, 8, epoch=1, seed=3, units=units))
    halves = [list(EpochBatchSampler(20, 4, epoch=1, seed=3, rank=r, world_size=2, units=units)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == one and one != plain
    with pytest.raises(ValueError, match="exactly once"):
        EpochBatchSampler(4, 2, epoch=0, units=[[0, 1], [1, 2, 3]])


def test_group_units_follow_the_manifest_group_column(tmp_path):
    from flameclip.data.images import read_image_manifest
    from flameclip.data.images import group_units

    m = tmp_path / "m.jsonl"
    rows = [{"id": "a", "image": "a.png", "group": "g1"}, {"id": "b", "image": "b.png"},
            {"id": "c", "image": "c.png", "group": "g1"}, {"id": "d", "image": "d.png", "group": 7}]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert group_units(read_image_manifest(m)) == [[0, 2], [1], [3]]
    m.write_text(json.dumps({"id": "a", "image": "a.png", "group": [1]}) + "\n")
    with pytest.raises(DataError, match="'group' must be a string"):
        read_image_manifest(m)
