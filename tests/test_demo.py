"""The one-command demo and the ablations at their smallest scale: every step runs and reports."""

import json

import pytest

from flameclip.ablate import run_ablations
from flameclip.demo import run_demo
from flameclip.store import EmbeddingStore


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, run_demo(out, scale="tiny", workers=0, progress=False)


def test_tiny_demo_trains_both_models_and_reports_every_task(tiny_demo):
    out, res = tiny_demo
    labels = [c["label"] for c in res["checkpoints"]]
    assert labels == ["FLAME", "CLIP"]
    tasks = {(r["checkpoint"], r["task"], r["dataset"]) for r in res["results"]}
    for label in labels:
        assert {"zeroshot", "retrieval", "multilingual"} <= {t for c, t, _ in tasks if c == label}
    report = (out / "report" / "report.md").read_text()
    assert "FLAME" in report and "CLIP" in report
    saved = json.loads((out / "report" / "results.json").read_text())
    assert saved["demo"]["scale"] == "tiny" and saved["demo"]["seconds"]["total"] > 0
    # Running again reuses data, store and checkpoints instead of redoing them.
    again = run_demo(out, scale="tiny", workers=0, progress=False)
    assert again["demo"]["seconds"]["embed captions"] < res["demo"]["seconds"]["embed captions"]


def _steps(run_dir):
    return int(sorted((run_dir / "checkpoints").glob("step-*"))[-1].name.split("-")[1])


def test_ablations_mask_and_data_on_the_tiny_demo(tiny_demo):
    out, _ = tiny_demo
    res = run_ablations(out, groups=["mask", "data"], workers=0, progress=False)
    root = out / "ablations"
    # mask: the same prompts, decoupled or not; only the causal store says so in its fingerprint.
    assert [c["label"] for c in res["mask"]["checkpoints"]] == ["FDA", "no decoupling"]
    assert "route" not in EmbeddingStore(root / "facets-k-7" / "store").fingerprint  # the facets K=7 run
    assert EmbeddingStore(root / "mask-no-decoupling" / "store").fingerprint["route"] == "causal"
    # data: 25% of the images, the same optimiser steps as the demo's 100% run, and the demo's
    # FLAME and CLIP as reference rows.
    assert [c["label"] for c in res["data"]["checkpoints"]] == ["FLAME 100%", "CLIP 100%", "FLAME 25%"]
    full = [json.loads(s)["id"] for s in (out / "data" / "train" / "manifest.jsonl").read_text().splitlines()]
    part = [json.loads(s)["id"] for s in (root / "data-flame-25-manifest.jsonl").read_text().splitlines()]
    assert len(part) == round(0.25 * len(full)) == len(set(part)) and set(part) <= set(full)
    assert _steps(root / "data-flame-25" / "train") == _steps(out / "train-flame")
    for group in ("mask", "data"):
        labels = {r["checkpoint"] for r in res[group]["results"]}
        assert labels == {c["label"] for c in res[group]["checkpoints"]}
        assert (root / group / "report" / "report.md").exists()
    # A second call finds every variant done and trains nothing.
    stamp = (root / "data-flame-25" / "eval.json").stat().st_mtime_ns
    run_ablations(out, groups=["data"], workers=0, progress=False)
    assert (root / "data-flame-25" / "eval.json").stat().st_mtime_ns == stamp
