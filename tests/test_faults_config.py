"""Hostile configs: every mistake in a training config or an evaluation suite is one line naming it.

Each case is a file or override a user could plausibly write; the assertion is on the key named in
the message, so a message that loses the key fails the test.
"""

import pytest

from flameclip.config import TrainConfig, load_config, validate_config
from flameclip.evaluate.tasks import load_suite

GOOD_TASK = '[[task]]\ntask = "retrieval"\nname = "scenes"\npath = "r.jsonl"\n'


def _suite(tmp_path, text):
    p = tmp_path / "suite.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_a_good_suite_loads_with_paths_from_its_folder(tmp_path):
    (spec,) = load_suite(_suite(tmp_path, GOOD_TASK + 'mode = "long7"\n'))
    assert spec.mode == "long7" and spec.path == str(tmp_path / "r.jsonl")


@pytest.mark.parametrize("text, named", [
    (GOOD_TASK + 'mdoe = "long7"\n', "did you mean 'mode'"),  # the typo that silently ran "single"
    ('[[task]]\ntask = "retrieval"\nname = "scenes"\npth = "r.jsonl"\n', "did you mean 'path'"),
    ('[[task]]\ntask = "retrieval"\nname = "scenes"\n', "needs path"),  # would evaluate the current folder
    ('[[task]]\ntask = "retrieval"\npath = "r.jsonl"\n', "needs name"),
    ('[[task]]\ntask = "linear_probe"\nname = "p"\ntrain = "a.jsonl"\n', "needs test"),
    ('[[task]]\ntask = "retrival"\nname = "x"\npath = "r"\n', "choose one of"),
    (GOOD_TASK + 'mode = 7\n', "mode must be a str"),
    (GOOD_TASK + 'templates = "a photo of a {c}."\n', "templates must be a list"),
    (GOOD_TASK + 'classnames = ["cat", 3]\n', "every entry of classnames"),
    ('tasks = 1\n' + GOOD_TASK, "unknown top-level key(s) tasks"),
    ('[[task]\ntask = "retrieval"\n', "not valid TOML"),
    ('# nothing\n', "no [[task]] tables"),
])
def test_every_suite_mistake_is_one_line_naming_the_key(tmp_path, text, named):
    with pytest.raises(ValueError) as e:
        load_suite(_suite(tmp_path, text))
    msg = str(e.value)
    assert named in msg and str(tmp_path / "suite.toml") in msg and "\n" not in msg


@pytest.mark.parametrize("override, named", [
    ("positives=0", "positives"),  # trained with a NaN loss before
    ("grad_accum=0", "grad_accum"),  # ZeroDivisionError before
    ("epochs=0", "epochs"),  # "checkpoint None" before
    ("batch_size=-4", "batch_size"),
    ("max_steps=-1", "max_steps"),
    ("lr=-1e-3", "lr"),
    ("lr=nan", "lr"),
    ("lr=inf", "lr"),  # trained to NaN weights and exited 0 before
    ("model.init_logit_bias=-inf", "model.init_logit_bias"),
    ("betas=[nan, 0.95]", "betas"),  # failed inside AdamW, after the data was loaded, before
    ("save_every=0", "save_every"),
    ("log_every=0", "log_every"),
    ("eval_images=0", "eval_images"),
    ("warmup_steps=-1", "warmup_steps"),
    ("keep_checkpoints=-1", "keep_checkpoints"),
    ("weight_decay=-0.1", "weight_decay"),
    ("model.vision_depth=0", "model.vision_depth"),
    ("model.image_size=30", "model.image_size"),  # not a multiple of the patch size
    ("lsos=\"softmax\"", "did you mean 'loss'"),
    ("loss=\"softmx\"", "loss"),
])
def test_nonsense_settings_are_refused_before_training(override, named):
    with pytest.raises(ValueError) as e:
        load_config(None, [override])
    assert named in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, named", [(b"lr = 1e-3\nepochs = \n", "not valid TOML"),
                                            (b"lr = 1e-3\n# caf\xe9\n", "not UTF-8 text (byte 15)")])
def test_a_broken_config_file_is_named(tmp_path, content, named):
    path = tmp_path / "train.toml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_config(str(path))
    assert str(path) in str(e.value) and named in str(e.value) and "\n" not in str(e.value)


def test_the_python_api_is_checked_too():
    cfg = TrainConfig()
    cfg.grad_accum = 0
    with pytest.raises(ValueError, match="grad_accum"):
        validate_config(cfg)
    validate_config(TrainConfig())  # the defaults are valid
    cfg = TrainConfig()
    cfg.epochs = float("nan")  # passed every "at least" check before, and trained no step
    with pytest.raises(ValueError, match="'epochs' must hold finite numbers"):
        validate_config(cfg)


@pytest.mark.parametrize("vision, named", [("hf-hub:timm/vit_tiny_patch16_224", "never downloads"),
                                           ("local-dir:/somewhere", "never downloads"),
                                           ("vit_tiny_patch16_244", "did you mean 'vit_tiny_patch16_224'")])
def test_a_vision_source_that_is_not_an_architecture_is_refused(tmp_path, vision, named):
    import json

    from flameclip.model import CONFIG_NAME, FlameModel, ModelConfig, ModelLoadError

    with pytest.raises(ValueError, match=f"model.vision: .*{named}"):
        load_config(None, [f"model.vision=\"{vision}\""])
    # A checkpoint whose config says so (edited, or made by something else) is refused on load,
    # before timm could reach the hub.
    FlameModel(ModelConfig(vision_width=32, vision_depth=1, vision_heads=2, image_size=32, text_dim=16)).save_pretrained(
        str(tmp_path))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**meta, "vision": vision}))
    with pytest.raises(ModelLoadError, match=named):
        FlameModel.from_pretrained(str(tmp_path))
