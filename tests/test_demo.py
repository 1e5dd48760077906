"""The one-command demo and the ablations at their smallest scale: every step runs and reports."""

import json

import pytest

from flameclip.ablate import run_ablations
from flameclip.demo import FLAME_SETTINGS, run_demo, text_side
from flameclip.store import EmbeddingStore

# The demo end to end, and its ablations: minutes, not seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_demo(out, scale="tiny", workers=0, progress=False, data_efficiency=True)


def test_tiny_demo_trains_both_models_and_reports_every_task(tiny_demo):
    out, res = tiny_demo
    labels = [c["label"] for c in res["checkpoints"]]
    assert labels == ["FLAME", "CLIP", "FLAME 25%", "FLAME 50%"]
    tasks = {(r["checkpoint"], r["task"], r["dataset"]) for r in res["results"]}
    for label in labels:
        assert {"zeroshot", "retrieval", "multilingual"} <= {t for c, t, _ in tasks if c == label}
    assert {"scenes-long", "scenes-novel-phrasing"} <= {d for _, t, d in tasks if t == "retrieval"}
    report = (out / "report" / "report.md").read_text()
    assert "FLAME" in report and "CLIP" in report and "The demo's targets" in report
    # The report says which text side FLAME ran: the paper's frozen-only one or with an adapter.
    assert f"its text side is {text_side(FLAME_SETTINGS)}" in report
    for png in ("learning_curves.png", "data_efficiency.png"):
        assert (out / "report" / png).stat().st_size > 1000 and f"]({png})" in report
    # Every target carries its chance level.
    assert res["targets"] and all(t["chance"] is not None for t in res["targets"] if t["flame"] is not None)
    # The learning curves cover training and held-out scenes; the held-out ones are the data's
    # validation split, disjoint from the scenes trained on.
    curves = (out / "train-flame" / "curves.csv").read_text()
    assert ",train," in curves and ",val," in curves
    fit = {json.loads(s)["id"] for s in (out / "data" / "train" / "fit.jsonl").read_text().splitlines()}
    val = {json.loads(s)["id"] for s in (out / "data" / "train" / "val.jsonl").read_text().splitlines()}
    assert fit and val and not fit & val
    # The data-efficiency runs: nested subsets of the fit scenes, the same optimiser steps.
    part25 = [json.loads(s)["id"] for s in (out / "fit-25.jsonl").read_text().splitlines()]
    part50 = [json.loads(s)["id"] for s in (out / "fit-50.jsonl").read_text().splitlines()]
    assert len(part25) == round(0.25 * len(fit)) and set(part25) <= set(part50) <= fit
    assert _steps(out / "train-flame-25") == _steps(out / "train-flame") == _steps(out / "train-clip")
    saved = json.loads((out / "report" / "results.json").read_text())
    assert saved["demo"]["scale"] == "tiny" and saved["demo"]["seconds"]["total"] > 0
    # Running again reuses data, store and checkpoints instead of redoing them. Without
    # --data-efficiency (the default) only FLAME and CLIP are evaluated, and the report neither
    # shows nor keeps the earlier run's data-efficiency figure.
    again = run_demo(out, scale="tiny", workers=0, progress=False)
    assert again["demo"]["seconds"]["embed captions"] < res["demo"]["seconds"]["embed captions"]
    assert [c["label"] for c in again["checkpoints"]] == ["FLAME", "CLIP"]
    assert "train FLAME 25%" not in again["demo"]["seconds"]
    assert "data_efficiency.png" not in (out / "report" / "report.md").read_text()
    assert not (out / "report" / "data_efficiency.png").exists()
    assert "learning_curves.png" in (out / "report" / "report.md").read_text()


def _steps(run_dir):
    return int(sorted((run_dir / "checkpoints").glob("step-*"))[-1].name.split("-")[1])


def test_ablations_mask_on_the_tiny_demo(tiny_demo):
    out, _ = tiny_demo
    res = run_ablations(out, groups=["mask"], workers=0, progress=False)
    root = out / "ablations"
    # mask: the same prompts, decoupled or not; only the causal store says so in its fingerprint.
    assert [c["label"] for c in res["mask"]["checkpoints"]] == ["FDA", "no decoupling"]
    assert "route" not in EmbeddingStore(root / "facets-k-7" / "store").fingerprint  # the facets K=7 run
    assert EmbeddingStore(root / "mask-no-decoupling" / "store").fingerprint["route"] == "causal"
    assert _steps(root / "mask-no-decoupling" / "train") == _steps(out / "train-flame")
    labels = {r["checkpoint"] for r in res["mask"]["results"]}
    assert labels == {c["label"] for c in res["mask"]["checkpoints"]}
    assert (root / "mask" / "report" / "report.md").exists()
    # A second call finds every variant done and trains nothing.
    stamp = (root / "mask-no-decoupling" / "eval.json").stat().st_mtime_ns
    run_ablations(out, groups=["mask"], workers=0, progress=False)
    assert (root / "mask-no-decoupling" / "eval.json").stat().st_mtime_ns == stamp


def test_text_side_names_the_adapter_when_there_is_one():
    assert "paper's form" in text_side({"model": {}}) and "adapter" not in text_side({"model": {}})
    assert "adapter of 2 residual MLP block(s)" in text_side({"model": {"text_adapter_depth": 2}})
