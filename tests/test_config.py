"""Stage configs: published defaults, generated command line, YAML overrides, validation, published objects."""

import re

import pytest
import yaml

from config import GenEvalConfig, StageA1Config, StageA2Config, StageBConfig
from config_engine import ConfigError, from_dict, parse_config, save_config
from published_configs import Config_Generative_Model, published_config
from safe_pickle import PickledObject


def test_published_defaults():
    a1 = StageA1Config()
    assert (a1.lr, a1.weight_decay, a1.num_epoch, a1.warmup_epochs, a1.batch_size) == (2.5e-4, 0.05, 500, 40, 100)
    assert (a1.mask_ratio, a1.embed_dim, a1.depth, a1.num_heads, a1.mlp_ratio, a1.clip_grad) == (
        0.75,
        1024,
        24,
        16,
        1.0,
        0.8,
    )
    assert a1.hcp_path.endswith("data/HCP/npz") and a1.output_path.endswith("results")
    a2 = StageA2Config()
    assert (a2.lr, a2.num_epoch, a2.batch_size, a2.warmup_epochs, a2.kam_subs) == (5.3e-5, 15, 16, 2, ["sbj_3"])
    assert a2.pretrain_mbm_path.endswith("pretrains/GOD/fmri_encoder.pth")
    assert StageA2Config(dataset="BOLD5000").batch_size == 4
    b = StageBConfig()
    assert (b.lr, b.num_epoch, b.batch_size, b.clip_grad, b.crop_ratio, b.ddim_steps, b.num_samples) == (
        5.3e-5,
        500,
        5,
        0.5,
        0.2,
        250,
        5,
    )
    assert StageBConfig(dataset="BOLD5000").batch_size == 25
    assert b.use_time_cond and b.conditioner == "published"
    g = GenEvalConfig()
    assert (g.num_samples, g.ddim_steps, g.sampler, g.n_way, g.num_trials) == (5, 250, "plms", 50, 1000)


def test_command_line_types_booleans_lists_and_none():
    cfg = parse_config(
        StageA1Config,
        [
            "--mask_ratio",
            "0.65",
            "--num_epoch",
            "800",
            "--no-include_kam",
            "--focus_range",
            "0",
            "1500",
            "--num_sub_limit",
            "None",
            "--seed",
            "7",
        ],
    )
    assert cfg.mask_ratio == 0.65 and cfg.num_epoch == 800 and isinstance(cfg.num_epoch, int)
    assert cfg.include_kam is False and cfg.include_hcp is True  # defect #1: "--include_hcp False" was True
    assert cfg.focus_range == [0, 1500] and cfg.num_sub_limit is None
    assert cfg.seed == 7 and isinstance(cfg.seed, int)  # defect #9: the seed was a string
    b = parse_config(StageBConfig, ["--kam_subs", "sbj_1", "sbj_3", "--conditioner", "global_pool"])
    assert b.kam_subs == ["sbj_1", "sbj_3"] and b.conditioner == "global_pool"


def test_yaml_overrides_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 32, "lr": 1e-3, "include_kam": False}))
    cfg = parse_config(StageA1Config, ["--config", str(path), "--batch_size", "8"])
    assert (cfg.batch_size, cfg.lr, cfg.include_kam) == (8, 1e-3, False)


def test_saved_config_round_trips(tmp_path):
    cfg = StageBConfig(kam_subs=["sbj_1", "sbj_2"], img_size=64, ddim_steps=10)
    path = save_config(cfg, tmp_path)
    assert parse_config(StageBConfig, ["--config", str(path)]) == cfg


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--embed_dim", "100", "--num_heads", "16"], "embed_dim .100. must be divisible by num_heads .16."),
        (["--mask_ratio", "1.5"], "mask_ratio must be in"),
        (["--precision", "fp8"], "precision must be one of"),
        (["--focus_range", "10", "5"], "focus_range"),
        (["--no-include_hcp", "--no-include_kam"], "include_hcp / include_kam"),
    ],
)
def test_invalid_values_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(StageA1Config, argv)
    assert re.search(message, capsys.readouterr().err)


def test_unknown_yaml_field_and_bad_type_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown StageA1Config field.*not_a_field"):
        from_dict(StageA1Config, {"not_a_field": 1})
    with pytest.raises(ConfigError, match="include_kam must be true or false"):
        from_dict(StageA1Config, {"include_kam": "False"})
    with pytest.raises(ConfigError, match="dataset must be one of"):
        StageA2Config(dataset="THINGS")


def test_published_config_object_maps_onto_ours():
    published = PickledObject(
        seed=2022,
        root_path=".",
        dataset="GOD",
        kam_subs=["sbj_3"],
        img_size=256,
        batch_size=5,
        lr=5.3e-5,
        num_epoch=500,
        precision=32,
        global_pool=True,
        use_time_cond=True,
        num_samples=5,
        ddim_steps=250,
        HW=None,
        model_meta=None,
        checkpoint_path=None,
        logger=None,
    )
    cfg = from_dict(StageBConfig, published.to_dict(), strict=False)
    assert cfg.precision == "fp32" and cfg.ddim_steps == 250 and cfg.batch_size == 5
    assert cfg.conditioner == "global_pool"  # the published name of the conditioner, read where configs are read
    former = {"global_pool": True, "linear_pool": True, "ridge_init": True}  # a config.yaml of ours, before
    assert from_dict(StageBConfig, former).conditioner == "linear_pool"
    with pytest.raises(ConfigError, match="global_pool must be true or false"):
        from_dict(StageBConfig, {"global_pool": "no"})
    with pytest.raises(ConfigError, match="conditioner must be one of"):
        StageBConfig(conditioner="resampler")
    with pytest.raises(ConfigError, match="the conditioner 'published' has none"):
        StageBConfig(conditioner="published", ridge_init=True)


def test_published_protocol_sets_the_papers_settings():
    cfg = GenEvalConfig(protocol="published", num_samples=1, ddim_steps=10, metrics=["pcc"])
    assert (cfg.num_samples, cfg.ddim_steps, cfg.sampler, cfg.n_way, cfg.num_trials) == (5, 250, "plms", 50, 1000)
    assert cfg.metrics == ["mse_uint8", "pcc", "ssim", "lpips", "n_way", "fid"]
    import gen_eval

    scores = {"top-1-class": 0.2, "100-way top-1-class": 0.1}
    intervals = {"top-1-class": [0.15, 0.25], "100-way top-1-class": [0.05, 0.15]}
    table = gen_eval.paper_table({"scores": scores, "intervals": intervals}, "GOD", ["sbj_3"])
    assert "top-1-class                    0.2000 [0.1500, 0.2500]     0.2385" in table and "fid" in table


def test_whole_numbers_only_for_integer_fields():
    assert from_dict(StageA1Config, {"num_epoch": 50.0}).num_epoch == 50
    with pytest.raises(ConfigError, match=r"num_epoch must be a whole number, got 1\.7"):
        from_dict(StageA1Config, {"num_epoch": 1.7})
    with pytest.raises(ConfigError, match="batch_size must be a whole number"):
        from_dict(StageA1Config, {"batch_size": True})


@pytest.mark.parametrize("config", [StageA1Config, StageA2Config])
def test_the_warm_up_ends_before_the_run_does(config):
    """A schedule whose warm-up is the whole run never reaches its peak learning rate (the demo's A1 once was)."""
    assert from_dict(config, {"num_epoch": 2, "warmup_epochs": 1}).warmup_epochs == 1
    assert from_dict(config, {"num_epoch": 1, "warmup_epochs": 0}).warmup_epochs == 0
    for warmup in (2, 3):
        with pytest.raises(ConfigError, match=r"warmup_epochs must be in \[0, num_epoch=2\): the warm-up must end"):
            from_dict(config, {"num_epoch": 2, "warmup_epochs": warmup})


def test_a_run_folder_of_the_former_names_resumes(tmp_path):
    """A Stage B run written before the conditioner registry (config.yaml with global_pool / linear_pool and the
    published accumulate_grad) is still a run folder of the stage, and resumes with the same settings."""
    from resume import resume_checkpoint_path

    run = tmp_path / "run"
    run.mkdir()
    fields = {"global_pool": True, "linear_pool": True, "ridge_init": True, "accumulate_grad": 2, "lr": 1e-4}
    (run / "config.yaml").write_text(yaml.safe_dump(fields))
    (run / "checkpoint.pth").write_bytes(b"")
    cfg = parse_config(StageBConfig, ["--resume", str(run)])
    assert (cfg.conditioner, cfg.accum_iter, cfg.ridge_init) == ("linear_pool", 2, True)
    assert resume_checkpoint_path(cfg) == run / "checkpoint.pth"
    written = published_config(cfg, Config_Generative_Model)  # what the original reads back
    assert written.accumulate_grad == 2 and written.global_pool is False and not hasattr(written, "accum_iter")
