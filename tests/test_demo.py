"""`make demo` at tiny size: every step runs and every artefact is written; a second run reuses the cache."""

import json
import logging

import demo


def test_tiny_demo_writes_every_artefact(tmp_path):
    out = demo.run("tiny", seed=0, root=tmp_path)
    for name in ("grid.png", "grid_shuffled.png", "metrics.json", "metrics_shuffled.json", "summary.md",
                 "fmri_encoder_A1.pth", "fmri_encoder.pth", "finetuned.pth"):
        assert (out / name).is_file(), name
    models = tmp_path / "pretrains" / "demo" / "tiny"
    for name in ("label2img/config.yaml", "label2img/model.ckpt", "classifier.pth"):
        assert (models / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mse", "pcc", "ssim", "top-1-class"} <= set(metrics["scores"])
    summary = (out / "summary.md").read_text()
    assert "shuffled fMRI (control)" in summary and "| top-1-class |" in summary

    # the stages' logging set-up stops "mindvis" records from reaching the root logger: listen on the logger itself
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("mindvis.demo")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        demo.run("tiny", seed=0, root=tmp_path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    reused = [r.getMessage() for r in records if "reusing" in r.getMessage()]
    assert len(reused) == 6, reused  # data, models, A1, A2, B, gen_eval: all cached
