"""Stage B and gen_eval end to end on the tiny simulated data with tiny models (random weights)."""

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import gen_eval
import stageB_ldm_finetune
from baselines import grey_thumbnails, ridge_image_baseline
from checkpoint import load_checkpoint, save_checkpoint
from classifier_file import build_sequential, save_classifier_file
from config import GenEvalConfig, StageBConfig
from config_engine import ConfigError
from dc_ldm.ldm_for_fmri import load_finetuned
from errors import CheckpointError, UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from models import MAE_META, tiny_stage_b_world  # noqa: E402  (benchmarks/models.py)

MAE = MAE_META["tiny"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny simulated data, a tiny label2img folder (random weights) and a Stage A checkpoint."""
    return tiny_stage_b_world(tmp_path_factory.mktemp("stageB"))


def _stage_b_config(world, **overrides) -> StageBConfig:
    values = dict(
        root_path=str(world.root),
        output_path=str(world.root / "results"),
        kam_path=str(world.data / "Kamitani/npz"),
        pretrain_gm_path=str(world.ldm_dir),
        pretrain_mbm_path=str(world.stage_a),
        img_size=32,
        batch_size=8,
        num_epoch=2,
        val_every=1,
        num_val_items=3,
        num_samples=2,
        ddim_steps=4,
        seed=1,
    )
    values.update(overrides)
    return StageBConfig(**values)


@pytest.fixture(scope="module")
def finetuned(world):
    run_dir = stageB_ldm_finetune.main(_stage_b_config(world))
    return run_dir


def test_stage_b_writes_the_published_layout(world, finetuned):
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "finetuned.pth", "checkpoint.pth", "val_epoch0000.png"):
        assert (finetuned / name).is_file(), name
    epochs = [json.loads(line) for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and "val/ssim" in epochs[0]
    ckpt = load_checkpoint(finetuned / "finetuned.pth")
    assert set(ckpt) == {"model_state_dict", "config", "state"}
    assert type(ckpt["config"]).__qualname__ == "Config_Generative_Model"  # the original's class, as data
    assert ckpt["config"].model_meta["embed_dim"] == MAE["embed_dim"] and ckpt["config"].precision == 32
    assert ckpt["state"].dtype == torch.uint8
    assert "epoch 2/2 done: loss" in (finetuned / "log.txt").read_text()


def test_stage_b_trains_only_the_conditioning_path(world, finetuned):
    after = load_checkpoint(finetuned / "finetuned.pth")["model_state_dict"]
    cond_path = ("attn2", "norm2", "time_embed_condtion")
    changed = {k for k, v in world.label2img.items() if k in after and not torch.equal(v, after[k])}
    assert changed, "nothing was trained"
    assert all(k.startswith("model.diffusion_model.") and any(s in k for s in cond_path) for k in changed), changed
    stage_a = load_checkpoint(world.stage_a)["model"]
    assert not torch.equal(stage_a["blocks.0.attn.qkv.weight"], after["cond_stage_model.mae.blocks.0.attn.qkv.weight"])


def test_gen_eval_reloads_and_is_reproducible(world, finetuned):
    def run():
        cfg = GenEvalConfig(
            dataset="GOD",
            root_path=str(world.root),
            checkpoint=str(finetuned / "finetuned.pth"),
            output_path=str(world.root / "results"),
            num_samples=2,
            ddim_steps=4,
            batch_size=5,
            seed=7,
            limit=4,
            n_way=3,
            num_trials=10,
            metrics=["mse", "pcc", "ssim", "n_way"],
        )
        return gen_eval.main(cfg)

    a, b = run(), run()
    for name in ("grid.png", "metrics.json", "samples/000_0.png", "samples/003_1.png"):
        assert (a / name).is_file(), name
    metrics = json.loads((a / "metrics.json").read_text())
    assert {"mse", "pcc", "ssim"} <= set(metrics["scores"])
    assert "top-1-class" in metrics["skipped"] or "top-1-class" in metrics["scores"]  # ViT-H/14 absent here
    for name in ("mse", "pcc", "ssim"):  # 4 items, each scored over its 2 samples
        low, high = metrics["intervals"][name]
        assert len(metrics["per_item"][name]) == 4 and low <= metrics["scores"][name] <= high, name
    assert metrics["tie_rule"] == "split"
    assert np.array_equal(np.load(a / "samples.npy"), np.load(b / "samples.npy"))


def test_gen_eval_compile_samples_through_the_compiled_unet(world, finetuned, monkeypatch):
    compiled = []

    def through_dynamo(module):  # Dynamo's tracing without inductor's minutes of code generation: same numbers
        compiled.append(module)
        return torch.compile(module, backend="eager")

    monkeypatch.setattr(gen_eval, "compile_for_inference", through_dynamo)
    runs = {}
    for compile_unet in (False, True):
        cfg = GenEvalConfig(
            dataset="GOD",
            root_path=str(world.root),
            checkpoint=str(finetuned / "finetuned.pth"),
            output_path=str(world.root / "results"),
            num_samples=1,
            ddim_steps=4,
            batch_size=3,
            seed=7,
            limit=3,
            metrics=["mse"],
            compile=compile_unet,
        )
        runs[compile_unet] = gen_eval.main(cfg)
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "DiffusionWrapper"
    assert "UNet compiled" in (runs[True] / "log.txt").read_text()
    assert np.allclose(np.load(runs[True] / "samples.npy"), np.load(runs[False] / "samples.npy"), atol=1)


def test_published_checkpoint_with_pickled_config_loads(world, finetuned, tmp_path, monkeypatch):
    """A finetuned.pth as the original writes it: a pickled config.Config_Generative_Model without model_meta, the
    encoder architecture then read, as the original does, from the Stage A checkpoint's config."""
    ours = load_checkpoint(finetuned / "finetuned.pth")
    mod = types.ModuleType("config")

    class Config_Generative_Model:  # noqa: N801 - the published class name
        pass

    Config_Generative_Model.__module__ = "config"
    Config_Generative_Model.__qualname__ = "Config_Generative_Model"
    mod.Config_Generative_Model = Config_Generative_Model
    published = Config_Generative_Model()
    published.__dict__.update(
        {
            **vars(ours["config"]),
            "model_meta": None,
            "precision": 32,
            "logger": None,
            "pretrain_gm_path": "/authors/machine/pretrains/ldm/label2img",
        }
    )
    monkeypatch.setitem(sys.modules, "config", mod)
    torch.save(
        {"model_state_dict": ours["model_state_dict"], "config": published, "state": ours["state"]},
        tmp_path / "finetuned.pth",
    )
    monkeypatch.undo()
    model, values = load_finetuned(tmp_path / "finetuned.pth", world.ldm_dir, world.stage_a)
    assert values["model_meta"]["num_heads"] == MAE["num_heads"] and values["precision"] == 32
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ours["model_state_dict"].items())
    # without the Stage A checkpoint the head count cannot be known: refused, not guessed
    with pytest.raises(CheckpointError, match=r"does not give \['num_heads'\].*--pretrain_mbm_path"):
        load_finetuned(tmp_path / "finetuned.pth", world.ldm_dir, tmp_path / "absent.pth")


def test_bad_inputs(world, finetuned, tmp_path):
    with pytest.raises(CheckpointError, match="Stage A checkpoint not found: .*nope.pth"):
        stageB_ldm_finetune.main(_stage_b_config(world, pretrain_mbm_path=str(tmp_path / "nope.pth")))
    with pytest.raises(UserError, match="LDM config not found: .*config.yaml"):
        stageB_ldm_finetune.main(_stage_b_config(world, pretrain_gm_path=str(tmp_path)))
    with pytest.raises(UserError, match="expects .* voxels.*--roi"):
        gen_eval.main(
            GenEvalConfig(
                root_path=str(world.root),
                checkpoint=str(finetuned / "finetuned.pth"),
                output_path=str(tmp_path),
                roi="HVC",
                num_samples=1,
                ddim_steps=4,
                limit=2,
            )
        )
    assert not (tmp_path / "gen_eval").exists() or not any((tmp_path / "gen_eval").iterdir())


def test_resume_continues_the_run_and_refuses_a_finished_one(world, finetuned, tmp_path):
    run = Path(shutil.copytree(finetuned, tmp_path / "run"))
    with pytest.raises(ConfigError, match="already finished its 2 epochs"):
        stageB_ldm_finetune.main(_stage_b_config(world, resume=str(run)))
    resumed = stageB_ldm_finetune.main(_stage_b_config(world, resume=str(run), num_epoch=3))
    assert resumed == run
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in losses] == [0, 1, 2] and losses[2]["loss"] != losses[1]["loss"]


def test_classifier_file_drives_the_n_way_metric(world, finetuned, tmp_path):
    layers = [
        ["Conv2d", {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1}],
        ["ReLU", {}],
        ["AdaptiveAvgPool2d", {"output_size": 1}],
        ["Flatten", {}],
        ["Linear", {"in_features": 4, "out_features": 6}],
    ]
    torch.manual_seed(0)
    model = build_sequential(layers)
    save_classifier_file(tmp_path / "clf.pth", layers, model, 16, [0.5] * 3, [0.5] * 3)
    run = gen_eval.main(
        GenEvalConfig(
            root_path=str(world.root),
            checkpoint=str(finetuned / "finetuned.pth"),
            output_path=str(tmp_path),
            num_samples=1,
            ddim_steps=4,
            limit=4,
            n_way=3,
            num_trials=10,
            metrics=["n_way"],
            classifier=str(tmp_path / "clf.pth"),
            baselines=True,
        )
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert "top-1-class" in metrics["scores"] and 0 <= metrics["baselines"]["ridge_pcc"] <= 1
    assert len(metrics["per_item"]["top-1-class"]) == 4 and set(metrics["ties"]) == {"top-1-class"}
    assert (run / "metrics.png").is_file() and (run / "ridge_grid.png").is_file()


def test_ridge_baseline_reads_a_linear_code_and_not_noise():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (140, 16, 16, 3), dtype=np.uint8)
    code = grey_thumbnails(images, 8) @ rng.normal(size=(64, 300))  # a noiseless linear "brain"
    fmri = code + 0.3 * rng.normal(size=code.shape) * code.std()
    scores, predicted = ridge_image_baseline(fmri[:100], images[:100], fmri[100:], images[100:], size=8)
    assert scores["ridge_pcc"] > 0.9 and predicted.shape == (40, 16, 16, 3) and predicted.dtype == np.uint8
    noise = rng.normal(size=code.shape)
    chance, _ = ridge_image_baseline(noise[:100], images[:100], noise[100:], images[100:], size=8)
    assert abs(chance["ridge_pcc"] - 0.5) < 0.12
    for run in (scores, chance):  # each with its interval over the 40 test items, from the scores it keeps
        low, high = run["ridge_pcc_interval"]
        assert low < run["ridge_pcc"] < high and np.mean(run["ridge_pcc_per_item"]) == pytest.approx(run["ridge_pcc"])
    assert chance["ridge_pcc_interval"][0] < 0.5 < chance["ridge_pcc_interval"][1] < scores["ridge_pcc_interval"][0]


def test_condition_dropout_learns_a_null_context_for_guidance(world, finetuned, tmp_path):
    run = stageB_ldm_finetune.main(
        _stage_b_config(world, output_path=str(tmp_path), num_epoch=1, cond_dropout=0.5, guidance_scale=2.0)
    )
    ckpt = load_checkpoint(run / "finetuned.pth")
    assert ckpt["model_state_dict"]["cond_stage_model.null_context"].abs().sum() > 0  # trained from zeros
    # a null context far from every fMRI context, so that guidance visibly moves this barely trained model
    ckpt["model_state_dict"]["cond_stage_model.null_context"].normal_(0, 3.0)
    save_checkpoint(ckpt, tmp_path / "far.pth")
    cfg = dict(
        root_path=str(world.root),
        output_path=str(tmp_path),
        num_samples=1,
        ddim_steps=4,
        limit=2,
        metrics=["pcc"],
        guidance_scale=2.0,
        pretrain_gm_path=str(world.ldm_dir),
    )
    guided = gen_eval.main(GenEvalConfig(checkpoint=str(tmp_path / "far.pth"), **cfg))
    plain = gen_eval.main(GenEvalConfig(checkpoint=str(tmp_path / "far.pth"), **{**cfg, "guidance_scale": 1.0}))
    assert not np.array_equal(np.load(guided / "samples.npy"), np.load(plain / "samples.npy"))
    with pytest.raises(UserError, match="needs a model trained with --cond_dropout"):  # the published model has none
        gen_eval.main(GenEvalConfig(checkpoint=str(finetuned / "finetuned.pth"), **cfg))


def test_ridge_started_linear_pool_with_frozen_conditioner(world, tmp_path):
    """The demo's recipe: one context token = a Linear of all encoder tokens, started by ridge at the LDM's class
    embeddings; encoder and pool kept fixed, the UNet's conditioning path and the null context trained."""
    ldm_dir = tmp_path / "ldm"  # the world's LDM with a class table covering the 50 simulated classes (+ none)
    ldm_dir.mkdir()
    shutil.copy(world.ldm_dir / "config.yaml", ldm_dir / "config.yaml")
    state = dict(world.label2img)
    state["cond_stage_model.embedding.weight"] = torch.randn(51, state["cond_stage_model.embedding.weight"].shape[1])
    torch.save({"state_dict": state}, ldm_dir / "model.ckpt")
    run = stageB_ldm_finetune.main(
        _stage_b_config(
            world,
            output_path=str(tmp_path),
            pretrain_gm_path=str(ldm_dir),
            num_epoch=1,
            conditioner="linear_pool",
            ridge_init=True,
            freeze_encoder=True,
            freeze_mapper=True,
            cond_dropout=0.2,
            guidance_scale=2.0,
            latent_views=2,
        )
    )
    after = load_checkpoint(run / "finetuned.pth")["model_state_dict"]
    stage_a = load_checkpoint(world.stage_a)["model"]
    assert torch.equal(after["cond_stage_model.mae.blocks.0.attn.qkv.weight"], stage_a["blocks.0.attn.qkv.weight"])
    assert after["cond_stage_model.dim_mapper.weight"].shape[1] == 32 * (
        after["cond_stage_model.mae.pos_embed"].shape[1] - 1
    )  # L * D inputs
    assert "mapper started as the ridge map" in (run / "log.txt").read_text()
    changed = [k for k, v in world.label2img.items() if k in after and "attn2" in k and not torch.equal(v, after[k])]
    assert changed  # the UNet's cross-attention trained
    null = state["cond_stage_model.embedding.weight"][-1]  # the null context started at the "no class" row
    assert (
        load_checkpoint(run / "finetuned.pth")["model_state_dict"]["cond_stage_model.null_context"][0, 0] - null
    ).abs().max() < 0.05
    decoded = gen_eval.main(
        GenEvalConfig(
            checkpoint=str(run / "finetuned.pth"),
            root_path=str(world.root),
            output_path=str(tmp_path),
            num_samples=1,
            ddim_steps=4,
            limit=2,
            metrics=["pcc"],
        )
    )
    assert json.loads((decoded / "metrics.json").read_text())["guidance_scale"] == 2.0  # the checkpoint's own


@pytest.mark.parametrize("select_on", ["val_split", "test"])
def test_stage_b_chooses_its_model_without_test_items_by_default(world, monkeypatch, select_on):
    """The default validates on whole training images held out of training; `--select_on test` on test items."""
    seen = {}

    class Spy(stageB_ldm_finetune.Validation):
        def __init__(self, cfg, val_set, classifier):
            seen["val"] = val_set
            super().__init__(cfg, val_set, classifier)

    trained = []
    real_loader = stageB_ldm_finetune.make_loader
    monkeypatch.setattr(stageB_ldm_finetune, "Validation", Spy)
    monkeypatch.setattr(
        stageB_ldm_finetune, "make_loader", lambda pairs, *a, **k: trained.append(pairs) or real_loader(pairs, *a, **k)
    )
    run_dir = stageB_ldm_finetune.main(
        _stage_b_config(world, select_on=select_on, val_split=6, num_epoch=1, num_samples=1, snapshot_epochs=[1])
    )
    model, _ = load_finetuned(run_dir / "snapshot_epoch0001.pth", world.ldm_dir)  # a learning-curve point
    assert model.cond_stage_model is not None
    from readers.god import create_god_dataset

    full_train, test = create_god_dataset(world.data / "Kamitani/npz", subjects=["sbj_3"])
    val, train = seen["val"], trained[0]
    if select_on == "test":
        assert np.array_equal(val.fmri, test.fmri) and len(train) == len(full_train)
    else:
        assert len(np.unique(val.image_index)) == 6 and len(val) + len(train) == len(full_train)
        assert not set(val.image_index) & set(train.image_index)  # no held-out image is trained on
        rows = {r.tobytes() for r in full_train.fmri}
        assert all(r.tobytes() in rows for r in val.fmri)  # training fMRI, not test fMRI
    assert ("held out" in (run_dir / "log.txt").read_text()) == (select_on == "val_split")


def test_stage_b_trains_on_as_many_images_as_asked_nested_and_nearly_the_same_for_every_seed(world, monkeypatch):
    trained = []
    real_loader = stageB_ldm_finetune.make_loader
    monkeypatch.setattr(
        stageB_ldm_finetune, "make_loader", lambda pairs, *a, **k: trained.append(pairs) or real_loader(pairs, *a, **k)
    )
    for seed, n in ((1, 10), (1, 20), (2, 10)):
        stageB_ldm_finetune.main(
            _stage_b_config(world, val_split=6, num_train_images=n, num_epoch=1, num_samples=1, seed=seed)
        )
    images = [set(pairs.image_index.tolist()) for pairs in trained]
    assert [len(i) for i in images] == [10, 20, 10]
    assert images[0] < images[1]  # fewer pairs: a subset of more
    assert len(images[0] & images[2]) >= 8  # another seed differs only by its own validation images
    with pytest.raises(UserError, match="--num_train_images 200: the data show only 114 images"):
        stageB_ldm_finetune.main(_stage_b_config(world, val_split=6, num_train_images=200, num_epoch=1))


def test_stage_b_and_gen_eval_on_nsd(world, tmp_path):
    """Stage B and gen_eval on NSD (MindEye2's layout) with the flags GOD takes; gen_eval finds the data set, its
    subjects and its layout in the checkpoint."""
    nsd = world.data / "NSD" / "mindeye2"
    cfg = _stage_b_config(
        world,
        dataset="NSD",
        nsd_path=str(nsd),
        nsd_subs=["subj02"],
        output_path=str(tmp_path),
        num_epoch=1,
        val_split=4,
    )
    run_dir = stageB_ldm_finetune.main(cfg)
    assert "NSD ['subj02']" in (run_dir / "log.txt").read_text()
    out = gen_eval.main(
        GenEvalConfig(
            root_path=str(world.root),
            checkpoint=str(run_dir / "finetuned.pth"),
            nsd_path=str(nsd),
            output_path=str(tmp_path),
            num_samples=2,
            ddim_steps=4,
            limit=3,
            metrics=["mse", "pcc"],
        )
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_item"]["pcc"]) == 3
    assert "decoding 3 NSD ['subj02'] test fMRI" in (out / "log.txt").read_text()  # the checkpoint's subjects


def test_stage_b_killed_between_checkpoints_resumes_exactly(world, tmp_path, monkeypatch):
    """`ckpt_every` writes the training checkpoint between validations (the demo asks for every epoch, so a killed
    Stage B loses one epoch at most); a run killed after one, resumed, ends where an unkilled run ends, and
    checkpointing every epoch changes nothing the run computes."""

    def config(out, **overrides):
        return _stage_b_config(world, output_path=str(tmp_path / out), num_epoch=3, val_every=3, **overrides)

    whole = stageB_ldm_finetune.main(config("whole"))
    real = stageB_ldm_finetune.train_one_epoch

    def train_or_die(*args, **kwargs):
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt  # stands in for the process being killed between two epochs
        return real(*args, **kwargs)

    monkeypatch.setattr(stageB_ldm_finetune, "train_one_epoch", train_or_die)
    with pytest.raises(KeyboardInterrupt):
        stageB_ldm_finetune.main(config("killed", ckpt_every=1))
    monkeypatch.undo()
    (killed,) = (tmp_path / "killed" / "stageB").iterdir()
    assert load_checkpoint(killed / "checkpoint.pth")["epoch"] == 1  # no validation yet, the checkpoint all the same
    resumed = stageB_ldm_finetune.main(config("killed", ckpt_every=1, resume=str(killed)))
    every = stageB_ldm_finetune.main(config("every", ckpt_every=1))
    a = load_checkpoint(whole / "checkpoint.pth")
    for other in (resumed, every):
        b = load_checkpoint(other / "checkpoint.pth")
        assert a["epoch"] == b["epoch"] == 2
        assert all(torch.equal(v, b["model_state_dict"][k]) for k, v in a["model_state_dict"].items())
        for (ka, sa), (kb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items(), strict=True):
            assert ka == kb and all(torch.equal(sa[k], sb[k]) for k in sa)
