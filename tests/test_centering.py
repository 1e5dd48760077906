"""Text centring and whitening: one mean, or one per prompt facet, the same in training and at query time."""

import json

import numpy as np
import pytest
import torch

from flameclip.config import load_config
from flameclip.data.centering import CenteredStore, row_facets, store_means, store_whitening
from flameclip.inference import load
from flameclip.model import FlameModel, ModelConfig
from flameclip.store import EmbeddingStore
from flameclip.train import train

from .test_train import TINY, data  # noqa: F401  (the module-scoped fixture: shapes + a real store)


def test_facet_means_are_per_prompt_facet(data):  # noqa: F811
    store = EmbeddingStore(data["store"])
    assert row_facets(store) == ["single:0", "short3:0", "short3:1", "short3:2"]
    mean, names, means = store_means(store)
    rows = np.stack([store.get(i) for i in store.ids()])  # [N, 4, D], read independently
    assert names == ["single:0", "short3:0", "short3:1", "short3:2"]
    assert np.allclose(means.numpy(), rows.mean(axis=0), atol=1e-5)
    assert np.allclose(mean.numpy(), rows.reshape(-1, rows.shape[-1]).mean(axis=0), atol=1e-5)
    view = CenteredStore(store, names, means)
    sid = next(iter(store.ids()))
    assert np.allclose(view.get(sid), store.get(sid) - rows.mean(axis=0), atol=1e-5)
    assert np.allclose(view.get_column(sid, "short"), store.get_column(sid, "short") - rows.mean(axis=0)[1:], atol=1e-5)
    # After centring, each facet averages to zero over the store.
    assert np.abs(np.stack([view.get(i) for i in store.ids()]).mean(axis=0)).max() < 1e-4


def test_prompt_centring_at_query_time_matches_training(data, tmp_path):  # noqa: F811
    """A caption encoded at query time lands where its stored rows did in training (cosine 1)."""
    out = tmp_path / "run"
    cfg = load_config(None, [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={out}",
                             "batch_size=8", "positives=2", "max_steps=3", "save_every=100",
                             'model.text_center="prompt"', *TINY])
    res = train(cfg, progress=False)
    m = load(res.checkpoint, text_cache=tmp_path / "cache")
    assert m.cfg.text_facets == ["single:0", "short3:0", "short3:1", "short3:2"]
    store = EmbeddingStore(data["store"])
    _, names, means = store_means(store)
    view = CenteredStore(store, names, means)
    caps = [json.loads(line) for line in data["captions"].read_text().splitlines()][:6]
    for col, mode in (("raw", "single"), ("short", "short3")):
        stored = torch.from_numpy(np.stack([view.get_column(c["id"], col).mean(0) for c in caps]))
        want = m.model.encode_text(stored).float()
        got = m.encode_text([c[col] for c in caps], mode=mode)
        cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
        assert cos.min() > 0.9999, (col, cos)
    # A prompt set the model never saw falls back to the mean of all rows instead of failing.
    states = torch.randn(2, 7, m.model.cfg.text_dim)
    assert torch.allclose(m.model.center_states(states, "long7"), states - m.model.text_mean)


def test_every_flame_checkpoint_records_its_prompt_sets_and_notes_a_query_with_another(data, tmp_path, capsys):  # noqa: F811
    """Without "prompt" centring too, the checkpoint names the sets its rows were stored with; a
    query with another set works but says once that it is not what the model learned."""
    cfg = load_config(None, [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={tmp_path / 'run'}",
                             "batch_size=8", "max_steps=2", "save_every=100", *TINY])
    m = load(train(cfg, progress=False).checkpoint, text_cache=tmp_path / "cache")
    assert m.cfg.center_mode != "prompt"
    assert m.cfg.text_facets == ["single:0", "short3:0", "short3:1", "short3:2"]
    caption = json.loads(data["captions"].read_text().splitlines()[0])["short"]
    capsys.readouterr()
    m.encode_text([caption], mode="short3")
    assert "note:" not in capsys.readouterr().err
    m.encode_text([caption], mode="long3")
    m.encode_text([caption, caption + " Twice."], mode="long3")
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "'long3'" in err and "single, short3" in err


def test_text_center_setting_is_checked():
    with pytest.raises(ValueError, match="text_center"):
        FlameModel(ModelConfig(text_center="per-row"))
    assert ModelConfig(text_center=True).center_mode == "global"
    assert ModelConfig(text_center=False).center_mode == "none"


def test_whitening_equalises_the_spectrum_of_centred_rows(data):  # noqa: F811
    """Full whitening makes the centred rows' covariance a multiple of the identity where the floor
    does not bite; power 0 changes nothing but the scale; a half power takes the square root of
    every eigenvalue ratio."""
    store = EmbeddingStore(data["store"])
    mean, names, means = store_means(store)
    view = CenteredStore(store, names, means)
    x = np.stack([view.get(i) for i in store.ids()]).reshape(-1, store.dim).astype(np.float64)
    cov = x.T @ x / len(x)
    lam = np.linalg.eigvalsh(cov)
    kept = lam > 1e-2 * lam.mean()
    for power in (0.0, 0.5, 1.0):
        w = store_whitening(store, power, names, means, shrink=1e-2).double().numpy()
        assert np.allclose(w, w.T, atol=1e-5)
        out = np.linalg.eigvalsh(w @ cov @ w)  # w symmetric: the covariance of x @ w
        # the same eigenvectors, so eigenvalues map one to one in sorted order
        ratio = out[kept] / lam[kept] ** (1 - power)
        assert ratio.std() / ratio.mean() < 1e-3, power
        # the average row keeps its squared norm
        assert np.isclose(np.trace(w @ cov @ w), np.trace(cov), rtol=1e-4)
    # asked for a root-mean-square per dimension instead: an average row's squared norm is rms^2 * D
    w = store_whitening(store, 0.75, names, means, shrink=1e-2, rms=10.0).double().numpy()
    assert np.isclose(np.trace(w @ cov @ w), 100.0 * store.dim, rtol=1e-4)


def test_whitened_model_trains_and_queries_land_on_stored_rows(data, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    cfg = load_config(None, [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={out}",
                             "batch_size=8", "positives=2", "max_steps=3", "save_every=100",
                             'model.text_center="prompt"', "model.text_whiten=0.5", *TINY])
    m = load(train(cfg, progress=False).checkpoint, text_cache=tmp_path / "cache")
    store = EmbeddingStore(data["store"])
    _, names, means = store_means(store)
    w = store_whitening(store, 0.5, names, means)
    assert torch.allclose(m.model.text_whitening.cpu(), w, atol=1e-6)  # the buffer survives the checkpoint
    view = CenteredStore(store, names, means)
    caps = [json.loads(line) for line in data["captions"].read_text().splitlines()][:4]
    stored = torch.from_numpy(np.stack([view.get_column(c["id"], "raw").mean(0) for c in caps]))
    want = torch.nn.functional.normalize(stored @ w, dim=-1)
    got = m.encode_text([c["raw"] for c in caps], mode="single")
    assert torch.nn.functional.cosine_similarity(want, got.float(), dim=-1).min() > 0.9999


def test_whitening_needs_centred_llm_states():
    with pytest.raises(ValueError, match="text_whiten"):
        FlameModel(ModelConfig(text_whiten=0.5))
    with pytest.raises(ValueError, match="text_whiten"):
        FlameModel(ModelConfig(text_whiten=1.5, text_center="global"))


def test_within_image_whitening_equalises_the_spread_of_an_images_own_rows(data, tmp_path):  # noqa: F811
    """With covariance="within-image", full whitening makes the spread of each row about its image's
    mean row isotropic (where the floor does not bite), not that of all rows; the default stays the
    total's; a store of one row per image, a typo or the option without whitening are refused."""
    store = EmbeddingStore(data["store"])
    _, names, means = store_means(store)
    view = CenteredStore(store, names, means)
    rows = np.stack([view.get(i) for i in store.ids()]).astype(np.float64)  # [N, R, D]
    x = rows.reshape(-1, store.dim)
    y = (rows - rows.mean(axis=1, keepdims=True)).reshape(-1, store.dim)
    total, within = x.T @ x / len(x), y.T @ y / len(y)
    lam = np.linalg.eigvalsh(within)
    kept = lam > 1e-2 * lam.mean()
    w = store_whitening(store, 1.0, names, means, covariance="within-image").double().numpy()
    assert np.allclose(w, w.T, atol=1e-5)
    out = np.linalg.eigvalsh(w @ within @ w)[kept]
    assert out.std() / out.mean() < 1e-3
    assert np.isclose(np.trace(w @ total @ w), np.trace(total), rtol=1e-4)  # an average row keeps its norm
    # not the same matrix as the total's whitening, which leaves the within-image spread uneven
    t = store_whitening(store, 1.0, names, means).double().numpy()
    uneven = np.linalg.eigvalsh(t @ within @ t)[kept]
    assert uneven.std() / uneven.mean() > 0.1
    with pytest.raises(ValueError, match="covariance"):
        store_whitening(store, 1.0, names, means, covariance="within")

    class OneRowPerImage:  # the store's alt-text rows alone
        root, ids, get_many = "one-row-store", store.ids, lambda self, ids: store.get_many(ids)[:, :1]

    with pytest.raises(ValueError, match="several rows per image.*one-row-store"):
        store_whitening(OneRowPerImage(), 1.0, mean=torch.zeros(store.dim), covariance="within-image")
    with pytest.raises(ValueError, match="text_whiten_covariance"):
        FlameModel(ModelConfig(text_whiten=0.5, text_center="prompt", text_whiten_covariance="within"))
    with pytest.raises(ValueError, match="needs whitening"):
        FlameModel(ModelConfig(text_center="prompt", text_whiten_covariance="within-image"))
    # trained with it, the checkpoint holds that matrix
    cfg = load_config(None, [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={tmp_path / 'r'}",
                             "batch_size=8", "max_steps=1", "save_every=100", 'model.text_center="prompt"',
                             "model.text_whiten=0.75", 'model.text_whiten_covariance="within-image"', *TINY])
    m = load(train(cfg, progress=False).checkpoint, text_cache=tmp_path / "cache")
    want = store_whitening(store, 0.75, names, means, covariance="within-image")
    assert torch.allclose(m.model.text_whitening.cpu(), want, atol=1e-6)
    assert m.cfg.text_whiten_covariance == "within-image"
