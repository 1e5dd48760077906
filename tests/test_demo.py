"""The one-command demo at its smallest scale: every step runs and the report compares both models."""

import json

from flameclip.demo import run_demo


def test_tiny_demo_trains_both_models_and_reports_every_task(tmp_path):
    res = run_demo(tmp_path / "demo", scale="tiny", workers=0, progress=False)
    labels = [c["label"] for c in res["checkpoints"]]
    assert labels == ["FLAME", "CLIP"]
    tasks = {(r["checkpoint"], r["task"], r["dataset"]) for r in res["results"]}
    for label in labels:
        assert {t for c, t, _ in tasks if c == label} == {"zeroshot", "retrieval", "multilingual"}
    report = (tmp_path / "demo" / "report" / "report.md").read_text()
    assert "FLAME" in report and "CLIP" in report
    saved = json.loads((tmp_path / "demo" / "report" / "results.json").read_text())
    assert saved["demo"]["scale"] == "tiny" and saved["demo"]["seconds"]["total"] > 0
    # Running again reuses data, store and checkpoints instead of redoing them.
    again = run_demo(tmp_path / "demo", scale="tiny", workers=0, progress=False)
    assert again["demo"]["seconds"]["embed captions"] < res["demo"]["seconds"]["embed captions"]
