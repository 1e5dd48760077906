"""flameclip recaption with a tiny random LLaVA: the table, resume, two processes, webdataset input, refusals.

The model's words mean nothing; what is tested is the plumbing: every image captioned once, in
order, the table readable by embed, the same bytes after an interruption or across processes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from flameclip import recaption as R
from flameclip.data.captions import read_captions

sys.path.insert(0, str(Path(__file__).parent))
from random_vlm import make_random_vlm  # noqa: E402

N = 10


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return str(make_random_vlm(tmp_path_factory.mktemp("vlm") / "tiny-llava"))


@pytest.fixture
def images(tmp_path):
    rows = []
    for i in range(N):
        Image.new("RGB", (24 + i, 20), (20 * i, 100, 200 - 10 * i)).save(tmp_path / f"img{i}.png")
        rows.append({"id": f"s{i}", "image": f"img{i}.png", "caption": f"alt text {i}"})
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rows.insert(4, {"id": "broken", "image": "broken.png", "caption": "lost"})
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"columns": {"short": {"prompt": "One sentence.", "max_new_tokens": 4},
                                            "long": {"prompt": "Every detail.", "max_new_tokens": 9}}}))
    return str(path)


def config(images, vlm, out, prompts, **kw):
    return R.RecaptionConfig(images=str(images), model=vlm, out=str(out), prompts=prompts,
                             **{"batch_size": 2, "chunk_size": 3, **kw})


def test_every_image_once_in_order_and_embed_reads_the_table(tmp_path, images, vlm, prompts, monkeypatch):
    asked = set()
    real = R.Captioner.caption

    def spy(self, imgs, prompt, max_new_tokens):
        asked.add((prompt, max_new_tokens))
        return real(self, imgs, prompt, max_new_tokens)

    monkeypatch.setattr(R.Captioner, "caption", spy)
    out = tmp_path / "caps.parquet"
    s = R.run_recaption(config(images, vlm, out, prompts), progress=False)
    assert asked == {("One sentence.", 4), ("Every detail.", 9)}  # each column's prompt and token budget
    assert s.complete and s.images == N + 1 and s.captioned == N and s.failed_ids == ["broken"]
    table = read_captions(out, ["raw", "short", "long"])
    assert table.ids == [f"s{i}" for i in range(N)]
    assert table.columns["raw"] == [f"alt text {i}" for i in range(N)]
    assert sum(map(len, table.columns["long"])) > sum(map(len, table.columns["short"]))  # 9 tokens against 4
    failed = [json.loads(x) for x in Path(f"{out}.failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["broken"] and "broken.png" in failed[0]["path"]


def test_an_interrupted_run_resumes_without_captioning_an_image_twice(tmp_path, images, vlm, prompts, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    R.run_recaption(config(images, vlm, whole, prompts), progress=False)

    seen: list[int] = []
    real = R.Captioner.caption

    def counting(self, imgs, prompt, max_new_tokens, fail_after=None):
        seen.append(len(imgs))
        if fail_after is not None and len(seen) > fail_after:
            raise KeyboardInterrupt
        return real(self, imgs, prompt, max_new_tokens)

    out = tmp_path / "cut.jsonl"
    monkeypatch.setattr(R.Captioner, "caption", lambda *a: counting(*a, fail_after=5))
    with pytest.raises(KeyboardInterrupt):  # in the third batch (2 prompts per batch): chunk 0 done, chunk 1 not
        R.run_recaption(config(images, vlm, out, prompts), progress=False)
    assert sorted(p.name for p in Path(f"{out}.parts").glob("chunk-*")) == ["chunk-000000.json"]
    assert not out.exists()
    first = sum(seen[::2])
    seen.clear()
    monkeypatch.setattr(R.Captioner, "caption", lambda *a: counting(*a))
    s = R.run_recaption(config(images, vlm, out, prompts), progress=False)
    assert s.complete and s.captioned == N - 3  # chunk 0 (s0-s2) was kept
    assert sum(seen[::2]) == N - 3  # the good images outside chunk 0 (s0-s2), each once
    assert first >= 2
    assert out.read_bytes() == whole.read_bytes()


def test_an_image_the_model_refuses_is_recorded_and_the_rest_captioned(tmp_path, images, vlm, prompts, monkeypatch):
    real = R.Captioner.caption

    def picky(self, imgs, prompt, max_new_tokens):
        if any(im.size[0] == 24 + 6 for im in imgs):  # s6's image, as a processor refuses an odd shape
            raise ValueError("image too narrow for this processor")
        return real(self, imgs, prompt, max_new_tokens)

    monkeypatch.setattr(R.Captioner, "caption", picky)
    out = tmp_path / "caps.jsonl"
    s = R.run_recaption(config(images, vlm, out, prompts), progress=False)
    assert s.complete and s.failed_ids == ["broken", "s6"]
    assert read_captions(out, ["raw"]).ids == [f"s{i}" for i in range(N) if i != 6]  # s5, s6's batch-mate, kept
    failed = [json.loads(x) for x in Path(f"{out}.failed.jsonl").read_text().splitlines()]
    assert "the model refused it: image too narrow" in failed[1]["error"]


def test_other_settings_never_mix_into_a_started_table(tmp_path, images, vlm, prompts):
    out = tmp_path / "caps.jsonl"
    R.run_recaption(config(images, vlm, out, prompts), progress=False)
    with pytest.raises(R.RecaptionError, match=r"other settings \(prompts differ\)"):
        R.run_recaption(config(images, vlm, out, "default"), progress=False)
    with pytest.raises(R.RecaptionError, match=r"batch_size, chunk_size differ"):
        R.run_recaption(config(images, vlm, out, prompts, batch_size=4, chunk_size=5), progress=False)


@pytest.mark.parametrize("spec, message", [
    ({"columns": {"raw": {"prompt": "x", "max_new_tokens": 3}}}, "table's own column"),
    ({"columns": {"long": {"prompt": "", "max_new_tokens": 3}}}, "non-empty string"),
    ({"columns": {"long": {"prompt": "x", "max_new_tokens": 0}}}, "positive integer"),
    ({"columns": {"long": {"prompt": "x", "max_tokens": 3}}}, "max_tokens"),
    ({"prompts": {}}, '"columns" object'),
])
def test_bad_prompt_files_are_named(tmp_path, spec, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(R.RecaptionError, match=message):
        R.load_prompts(str(path))
    assert set(R.load_prompts("default")) == {"short", "long"}


def test_webdataset_shards_give_the_alt_text_from_each_sample(tmp_path, vlm, prompts):
    shard = tmp_path / "000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(buf, format="JPEG")
            for name, data in ((f"k{i}.jpg", buf.getvalue()), (f"k{i}.txt", f"photo number {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "caps.csv"
    R.run_recaption(config(str(shard), vlm, out, prompts), progress=False)
    table = read_captions(out, ["raw", "short", "long"])
    assert table.ids == [f"k{i}" for i in range(4)] and table.columns["raw"][2] == "photo number 2"


def test_the_command_gives_one_line_for_a_missing_model(tmp_path, images, capsys):
    from flameclip.cli import main

    rc = main(["recaption", "--images", str(images), "--model", str(tmp_path / "nope"), "--out",
               str(tmp_path / "c.parquet"), "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "nope" in err[0] and "Traceback" not in err[0]


@pytest.mark.slow
def test_two_processes_write_the_table_one_process_writes(tmp_path, images, vlm, prompts):
    one = tmp_path / "one.parquet"
    R.run_recaption(config(images, vlm, one, prompts), progress=False)
    two = tmp_path / "two.parquet"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "flameclip.cli",
           "recaption", "--images", str(images), "--model", vlm, "--out", str(two), "--prompts", prompts,
           "--batch-size", "2", "--chunk-size", "3", "--no-progress"]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    assert two.read_bytes() == one.read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["chunk-000000.json", "chunk-000002.json"])
def test_sigkill_at_several_points_then_the_same_command_gives_the_same_table(tmp_path, images, vlm, prompts,
                                                                                kill_after):
    from subprocess_kill import kill_when_exists

    whole = tmp_path / "whole.jsonl"
    R.run_recaption(config(images, vlm, whole, prompts, chunk_size=2), progress=False)
    out = tmp_path / "cut.jsonl"
    cmd = [sys.executable, "-m", "flameclip.cli", "recaption", "--images", str(images), "--model", vlm, "--out",
           str(out), "--prompts", prompts, "--batch-size", "2", "--chunk-size", "2", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_exists(p, Path(f"{out}.parts") / kill_after)
    assert not out.exists(), "the kill must land before the table is written"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes() == whole.read_bytes()
