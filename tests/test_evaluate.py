"""Evaluation on real checkpoints: CLIP_benchmark's numbers, the text cache, reports, clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flameclip.config import load_config
from flameclip.data.images import DataError
from flameclip.embed import EmbedConfig, run_embed
from flameclip.evaluate.datasets import load_classification, load_retrieval
from flameclip.evaluate.tasks import Evaluator, TaskSpec, load_suite
from flameclip.inference import load
from flameclip.train import train

from .shapes_data import SHAPES, make_shapes

TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=32", "model.vision_depth=2",
        "model.vision_heads=2", "workers=0", "precision=fp32", "warmup_steps=2", "save_every=100", "epochs=3",
        "lr=2e-3"]
GERMAN = {"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber", "purple": "violetter",
          "orange": "oranger", "circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    d = make_shapes(root / "data", n=24, size=48)
    run_embed(EmbedConfig(captions=str(d["captions"]), out=str(root / "store"),
                          prompts={"raw": "single", "short": "short3"}), progress=False)
    flame = train(load_config(None, [f"train_manifest={d['manifest']}", f"store={root / 'store'}",
                                     f"out={root / 'flame'}", "batch_size=8", "positives=2", *TINY]), progress=False)
    clip = train(load_config(None, [f"train_manifest={d['manifest']}", f"captions={d['captions']}",
                                    f"out={root / 'clip'}", "batch_size=8", 'text_columns=["short"]',
                                    "model.text_tower=clip", "model.embed_dim=32", "model.clip_width=32",
                                    "model.clip_layers=1", "model.clip_heads=2", *TINY]), progress=False)
    # Evaluation sets built from the same images.
    caps = [json.loads(line) for line in Path(d["captions"]).read_text().splitlines()]
    data = root / "data"
    folder = root / "by_shape"
    for c in caps:
        shape = c["raw"].split()[1]
        (folder / shape).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "images" / f"{c['id']}.png", folder / shape / f"{c['id']}.png")
    with open(root / "retrieval.jsonl", "w") as f:
        # Distinct texts: identical captions of different images would tie, and ties are broken
        # arbitrarily by top-k, so two correct implementations could disagree.
        for k, c in enumerate(caps):
            f.write(json.dumps({"image": f"data/images/{c['id']}.png",
                                "caption": [f"{c['short']} Picture {k}.", f"{c['raw']}, number {k}"]}) + "\n")
    with open(root / "multilingual.jsonl", "w") as f:
        for c in caps:
            colour, shape = c["raw"].split()
            f.write(json.dumps({"image": f"data/images/{c['id']}.png", "caption": c["raw"], "language": "en"}) + "\n")
            f.write(json.dumps({"image": f"data/images/{c['id']}.png", "language": "de",
                                "caption": f"ein {GERMAN[colour]} {GERMAN[shape]}"}) + "\n")
    (root / "suite.toml").write_text(
        '[[task]]\ntask = "zeroshot"\nname = "shapes"\npath = "by_shape"\ntemplates = ["a {}.", "a photo of a {}."]\n'
        '[[task]]\ntask = "retrieval"\nname = "shapes-captions"\npath = "retrieval.jsonl"\nmode = "short3"\n'
        '[[task]]\ntask = "multilingual"\nname = "shapes-en-de"\npath = "multilingual.jsonl"\n'
        '[[task]]\ntask = "linear_probe"\nname = "shapes-probe"\ntrain = "by_shape"\ntest = "by_shape"\n')
    return {"root": root, "flame": flame.checkpoint, "clip": clip.checkpoint, "cache": root / "text-cache"}


def test_retrieval_equals_clip_benchmark_through_the_loader_contract(world):
    from clip_benchmark.metrics import zeroshot_retrieval

    for ckpt in (world["flame"], world["clip"]):
        m = load(ckpt, device="cpu", text_cache=world["cache"])
        ds = load_retrieval("r", str(world["root"] / "retrieval.jsonl"))
        ours = Evaluator(m).run(TaskSpec("retrieval", "r", str(world["root"] / "retrieval.jsonl")))["metrics"]
        model, transform, tokenizer = m.as_clip_benchmark()
        by_image = {}
        for t, i in zip(ds.texts, ds.text_to_image):
            by_image.setdefault(i, []).append(t)

        from PIL import Image

        class Pairs(torch.utils.data.Dataset):
            def __len__(self):
                return len(ds.images)

            def __getitem__(self, i):
                return transform(Image.open(ds.images[i]).convert("RGB")), by_image[i]

        loader = torch.utils.data.DataLoader(Pairs(), batch_size=7, collate_fn=lambda b: (
            torch.stack([x for x, _ in b]), [t for _, t in b]))
        theirs = zeroshot_retrieval.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
        for k in theirs:
            assert ours[k] == pytest.approx(theirs[k], abs=1e-6), k


def test_zero_shot_classifier_equals_clip_benchmark(world):
    from clip_benchmark.metrics import zeroshot_classification

    m = load(world["flame"], device="cpu", text_cache=world["cache"])
    model, _, tokenizer = m.as_clip_benchmark()
    templates = ["a {c}.", "a photo of a {c}.", "a drawing of a {c}."]
    theirs = zeroshot_classification.zero_shot_classifier(model, tokenizer, list(SHAPES), templates, "cpu", amp=False)
    ours = m.zero_shot_classifier(list(SHAPES), templates)
    assert torch.allclose(ours.T, theirs, atol=1e-5)  # clip_benchmark returns [E, C]


def test_suite_runs_every_task_and_the_second_run_needs_no_llm(world, monkeypatch):
    specs = load_suite(world["root"] / "suite.toml")
    m = load(world["flame"], device="cpu", text_cache=world["cache"])
    first = [Evaluator(m).run(s) for s in specs]
    by_task = {r["task"]: r for r in first}
    assert set(by_task) == {"zeroshot", "retrieval", "multilingual", "linear_probe"}
    assert by_task["zeroshot"]["counts"] == {"images": 24, "classes": 3}
    assert by_task["linear_probe"]["counts"]["classes"] == 3  # what its chance level is read from
    assert set(by_task["multilingual"]["per_language"]) == {"en", "de"}
    assert by_task["multilingual"]["images_per_language"] == {"en": 24, "de": 24}  # every image named in both
    en, de = (by_task["multilingual"]["per_language"][x]["image_retrieval_recall@1"] for x in ("en", "de"))
    assert by_task["multilingual"]["metrics"]["image_retrieval_recall@1"] == pytest.approx((en + de) / 2)
    for r in first:
        for v in r["metrics"].values():
            assert 0.0 <= v <= 1.0
    # A second model object (as for a second checkpoint on the same LLM) reads every text from the
    # cache: loading the LLM again would fail here.
    import flameclip.text.llm as llm_mod

    monkeypatch.setattr(llm_mod, "load_llm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("LLM loaded")))
    again = [Evaluator(load(world["flame"], device="cpu", text_cache=world["cache"])).run(s) for s in specs]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]


@pytest.mark.slow
def test_cli_compares_flame_and_clip_in_one_report(world, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "flameclip.cli", "eval", "--checkpoint", str(world["flame"]),
                        "--checkpoint", str(world["clip"]), "--data", str(world["root"] / "suite.toml"),
                        "--out", str(out), "--text-cache", str(world["cache"])],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [c["label"] for c in results["checkpoints"]] == ["FLAME", "CLIP"]
    assert len(results["results"]) == 8
    report = (out / "report.md").read_text()
    assert "FLAME" in report and "CLIP" in report
    for png in out.glob("*.png"):
        assert png.name in report
    assert "FLAME" in r.stdout and "CLIP" in r.stdout


def test_api_matches_the_model_and_survives_a_save_load(world, tmp_path):
    from PIL import Image

    m = load(world["flame"], device="cpu", text_cache=world["cache"])
    img = Image.open(next((world["root"] / "data" / "images").glob("*.png")))
    a = m.encode_image([img])
    direct = torch.nn.functional.normalize(m.model.encode_image(m.preprocess(img)[None]), dim=-1)
    assert torch.allclose(a, direct, atol=1e-6) and a.norm(dim=-1).sub(1).abs().max() < 1e-5
    m.model.save_pretrained(tmp_path / "copy")
    b = load(tmp_path / "copy", device="cpu", text_cache=world["cache"])
    assert torch.equal(b.encode_image([img]), a)
    assert torch.equal(b.encode_text(["a red circle."], mode="long7"), m.encode_text(["a red circle."], mode="long7"))
    # The long7 query is the facet mean, which differs from the single prompt.
    assert not torch.allclose(m.encode_text(["a red circle."], mode="long7"), m.encode_text(["a red circle."]))


def test_bad_evaluation_data_is_named(world, tmp_path):
    bad = tmp_path / "set"
    (bad / "cat").mkdir(parents=True)
    (bad / "cat" / "broken.png").write_bytes(b"not an image")
    m = load(world["flame"], device="cpu", text_cache=world["cache"])
    with pytest.raises(DataError, match="broken.png"):
        Evaluator(m).run(TaskSpec("zeroshot", "bad", str(bad), templates=["{}"]))
    man = tmp_path / "m.jsonl"
    man.write_text('{"image": "a.png", "label": "dog"}\n')
    with pytest.raises(DataError, match="label 'dog'"):
        load_classification("m", str(man), classnames=["cat"])
    ret = tmp_path / "r.jsonl"
    ret.write_text('{"image": "a.png", "caption": ""}\n')
    with pytest.raises(DataError, match="no caption"):
        load_retrieval("r", str(ret))


def test_flame_checkpoint_refuses_another_llm(world):
    m = load(world["flame"], device="cpu", text_cache=world["cache"] / "fresh")
    m.cfg.llm = dict(m.cfg.llm, weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="not the one this checkpoint was trained with"):
        m.encode_text(["a never seen text"], mode="single")


def test_api_numbers_equal_the_evaluation_suites(world):
    from PIL import Image

    m = load(world["flame"], device="cpu", text_cache=world["cache"])
    ds = load_retrieval("r", str(world["root"] / "retrieval.jsonl"))
    ev = Evaluator(m, batch_size=5)
    suite_images = ev.image_features(ds.images)
    api_images = m.encode_image([Image.open(p) for p in ds.images])
    assert torch.allclose(suite_images, api_images, atol=1e-6)
    # The suite's retrieval numbers follow from the API's embeddings.
    from flameclip.evaluate.metrics import retrieval_metrics

    api = retrieval_metrics(api_images, m.encode_text(ds.texts, mode="short3"), torch.tensor(ds.text_to_image))
    suite = ev.run(TaskSpec("retrieval", "r", str(world["root"] / "retrieval.jsonl"), mode="short3"))["metrics"]
    assert api == pytest.approx(suite, abs=1e-9)
