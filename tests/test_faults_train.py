"""Faults in training and its checkpoints: no silent wrong result, no lost checkpoint, one clear line.

Each test makes the fault for real (another LLM's store, a NaN loss, flipped bytes, a truncated
file, an error inside a DataLoader worker) and checks both the message and what is left on disk.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from flameclip.cli import user_message
from flameclip.data.images import DataError
from flameclip.embed import EmbedConfig, run_embed
from flameclip.model import FlameModel, ModelLoadError
from flameclip.text.prompts import load_prompt_set
from flameclip.train import TrainingDiverged, train

from .random_llm import make_random_llm
from .test_train import cfg_for, data  # noqa: F401 - the shared fixture: shapes and a SmolLM2 store


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def other_llm_store(data, tmp_path_factory):  # noqa: F811
    """The same captions embedded by another LLM of the same width (SmolLM2's architecture, random weights)."""
    from flameclip.text.llm import LLMNotFoundError, hf_folder, resolve

    try:
        src = hf_folder(resolve("smollm2-135m"))
    except LLMNotFoundError as e:
        pytest.fail(str(e))  # the packaged LLM is a dependency, not an option
    folder = tmp_path_factory.mktemp("other")
    llm = make_random_llm(src, folder / "llm")
    run_embed(EmbedConfig(captions=str(data["captions"]), out=str(folder / "store"), llm=str(llm),
                          prompts={"raw": "single", "short": "short3"}), progress=False)
    return folder / "store"


@pytest.mark.slow
def test_resume_with_another_llms_store_refuses_and_keeps_every_checkpoint(data, other_llm_store, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(cfg_for(data, out, "max_steps=4", "save_every=2"), progress=False)
    before = _tree_digest(out / "checkpoints")
    assert len([k for k in before if k.endswith("model.safetensors")]) == 2
    other = cfg_for(data, out, "max_steps=8", "save_every=2", "resume=latest")
    other.store = str(other_llm_store)
    with pytest.raises(DataError, match="embedded by") as e:
        train(other, progress=False)
    assert "smollm2-135m" in str(e.value) and "llm" in str(e.value)
    assert _tree_digest(out / "checkpoints") == before  # nothing pruned, nothing rewritten
    # The same store resumes.
    res = train(cfg_for(data, out, "epochs=3", "max_steps=6", "save_every=2", "resume=latest"), progress=False)
    assert res.steps == 6


@pytest.mark.slow
def test_resume_with_a_store_of_edited_captions_refuses_and_keeps_every_checkpoint(data, tmp_path):  # noqa: F811
    # The same LLM, prompts and samples, one caption edited: the LLM record alone cannot tell.
    rows = [json.loads(line) for line in data["captions"].read_text().splitlines()]
    rows[5]["short"] = "A very different caption about a striped circle."
    edited = tmp_path / "captions.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_embed(EmbedConfig(captions=str(edited), out=str(tmp_path / "store"), prompts={"raw": "single", "short": "short3"}),
              progress=False)
    out = tmp_path / "run"
    train(cfg_for(data, out, "max_steps=4", "save_every=2"), progress=False)
    before = _tree_digest(out / "checkpoints")
    other = cfg_for(data, out, "max_steps=8", "save_every=2", "resume=latest")
    other.store = str(tmp_path / "store")
    with pytest.raises(DataError, match="not the store it was trained on [(]other caption text[)]"):
        train(other, progress=False)
    assert _tree_digest(out / "checkpoints") == before


def test_a_store_of_other_prompt_sets_is_named_by_the_key_that_differs(tmp_path):
    from flameclip.checkpoints import check_store_identity

    def identity(long_sha, ids="a"):
        fp = {"llm": "x", "layer": 17, "prompt_sets": {"long": {"name": "long7", "sha": long_sha, "k": 7}}}
        return {"fingerprint": json.dumps(fp, sort_keys=True), "ids_sha256": ids, "captions_sha256": "c"}

    check_store_identity(tmp_path, identity("1"), identity("1"), "s")  # the same store resumes
    check_store_identity(tmp_path, None, identity("1"), "s")  # a checkpoint from before the record
    with pytest.raises(DataError, match=r"prompt set, token cap or route \(prompt_sets\)"):
        check_store_identity(tmp_path, identity("1"), identity("2"), "s")
    with pytest.raises(DataError, match=r"[(]other samples[)]"):
        check_store_identity(tmp_path, identity("1"), identity("1", ids="b"), "s")


def test_resume_with_another_model_shape_names_the_setting(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(cfg_for(data, out, "max_steps=2", "save_every=2"), progress=False)
    with pytest.raises(DataError, match="model.vision_width 32 in the checkpoint, 64 now"):
        train(cfg_for(data, out, "max_steps=4", "resume=latest", "model.vision_width=64"), progress=False)


def test_a_checkpoint_that_records_no_prompt_sets_still_resumes(data, tmp_path):  # noqa: F811
    """Older versions recorded text_facets only with "prompt" centring: such a checkpoint resumes."""
    out = tmp_path / "run"
    train(cfg_for(data, out, "max_steps=2", "save_every=2"), progress=False)
    config = out / "checkpoints" / "step-0000002" / "config.json"
    saved = json.loads(config.read_text())
    assert saved["text_facets"]  # this version records them
    config.write_text(json.dumps({**saved, "text_facets": []}))
    res = train(cfg_for(data, out, "max_steps=4", "resume=latest"), progress=False)
    assert res.checkpoint.name == "step-0000004"


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):  # noqa: F811
    import flameclip.train as train_module

    real = train_module.build_loss
    calls = {"n": 0}

    def poisoned(name):
        fn = real(name)

        def loss(*args):
            calls["n"] += 1
            value = fn(*args)
            return value * float("nan") if calls["n"] == 3 else value
        return loss

    monkeypatch.setattr(train_module, "build_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="step 3: the loss is nan") as e:
        train(cfg_for(data, out, "epochs=3", "max_steps=6", "save_every=2"), progress=False)
    assert "step-0000002" in str(e.value)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-0000002"]
    weights = FlameModel.from_pretrained(out / "checkpoints" / "step-0000002").state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_flipped_bytes_in_the_weights_are_refused_not_evaluated(data, tmp_path):  # noqa: F811
    res = train(cfg_for(data, tmp_path / "run", "max_steps=1"), progress=False)
    weights = res.checkpoint / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(blob[:8], "little")
    for i in range(header + 16, min(len(blob), header + 16 + 4000)):  # tensor data only: the header still parses
        blob[i] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="does not match the digest"):
        FlameModel.from_pretrained(res.checkpoint)


def test_damaged_checkpoint_files_are_named(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = train(cfg_for(data, out, "max_steps=2", "save_every=2"), progress=False)
    state = res.checkpoint / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(DataError, match="trainer_state.pt is unreadable"):
        train(cfg_for(data, out, "max_steps=4", "resume=latest"), progress=False)
    weights = res.checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        FlameModel.from_pretrained(res.checkpoint)
    (res.checkpoint / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json"):
        FlameModel.from_pretrained(res.checkpoint)


class _Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise DataError(f"sample {i}: caption column 'long' is empty")


def test_an_error_in_a_dataloader_worker_reaches_the_user_as_its_own_line():
    loader = torch.utils.data.DataLoader(_Failing(), batch_size=2, num_workers=1)
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith("Caught DataError in DataLoader worker")  # what torch gives
    assert user_message(e.value) == "sample 0: caption column 'long' is empty"
    assert user_message(ValueError("first line\nsecond")) == "first line"


def test_a_prompt_set_whose_prompts_is_a_string_is_refused(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"name": "mine", "prefix": 'Caption: "{caption}"', "prompts": " One word:"}))
    with pytest.raises(ValueError, match="'prompts' must be a list") as e:
        load_prompt_set(str(p))
    assert str(p) in str(e.value)


@pytest.mark.slow
def test_a_checkpoint_given_another_llm_names_both(data, tmp_path):  # noqa: F811
    from flameclip.inference import load

    res = train(cfg_for(data, tmp_path / "run", "max_steps=1"), progress=False)
    # gemma-3-270m has 18 layers: the checkpoint's layer 29 used to fail as "out of range"
    m = load(res.checkpoint, llm="gemma3-270m", text_cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="not the one this checkpoint was trained with, 'smollm2-135m'") as e:
        m.encode_text(["a red circle"], mode="single")
    assert "\n" not in str(e.value)
