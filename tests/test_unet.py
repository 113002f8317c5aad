"""The diffusion UNet: reference numbers, published key sets, config.yaml, bf16 autocast, checkpointing."""

import copy

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from conftest import REFERENCE_DIR, ROOT, load_fixture, rel_err
from dc_ldm.ldm_for_fmri import build_ldm_for_fmri
from dc_ldm.modules.diffusionmodules.util import GroupNorm32
from dc_ldm.modules.encoders.modules import ClassEmbedder
from dc_ldm.util import UnsafeConfigError, instantiate_from_config, load_ldm_config, resolve_target

CONFIG_YAML = ROOT / "pretrains" / "ldm" / "label2img" / "config.yaml"
UNET_PREFIX = "model.diffusion_model."


def _fixture_unet(**overrides):
    """The reference UNet (fixture config, overridden params) with the fixture weights and inputs."""
    config, tensors = load_fixture("unet")
    config = copy.deepcopy(config)
    config["params"].update(overrides)
    model = instantiate_from_config(config)
    model.load_state_dict(tensors["state_dict"], strict=True)
    return model, tensors


def test_unet_matches_reference():
    model, t = _fixture_unet()
    with torch.no_grad():
        out = model.eval()(t["x"], t["t"], context=t["context"])
    assert out.shape == t["out"].shape
    assert rel_err(out, t["out"]) <= 1e-4


@pytest.mark.parametrize("schema_name", ["label2img_ckpt", "finetuned_fmri_ldm"])
def test_published_unet_keys_and_shapes(schemas, schema_name):
    """Both published checkpoints carry time_embed_condtion (the config has use_time_cond true)."""
    unet_config = OmegaConf.load(CONFIG_YAML).model.params.unet_config
    with torch.device("meta"):
        model = instantiate_from_config(unet_config)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    want = {k[len(UNET_PREFIX) :]: v for k, v in schemas[schema_name]["keys"].items() if k.startswith(UNET_PREFIX)}
    assert got == want

    unet_config.params.use_time_cond = False
    with torch.device("meta"):
        plain = instantiate_from_config(unet_config)
    assert set(plain.state_dict()) == {k for k in want if not k.startswith("time_embed_condtion.")}


PUBLISHED_UNET = dict(
    image_size=64,
    in_channels=3,
    out_channels=3,
    model_channels=192,
    attention_resolutions=[8, 4, 2],
    num_res_blocks=2,
    channel_mult=[1, 2, 3, 5],
    num_heads=1,
    use_spatial_transformer=True,
    transformer_depth=1,
    context_dim=512,
    cond_scale=1.0,
    use_time_cond=True,
    global_pool=False,
)
PUBLISHED_VQ_DDCONFIG = dict(
    double_z=False,
    z_channels=3,
    resolution=256,
    in_channels=3,
    out_ch=3,
    ch=128,
    ch_mult=[1, 2, 4],
    num_res_blocks=2,
    attn_resolutions=[],
    dropout=0.0,
)
PUBLISHED_LDM = dict(
    linear_start=0.0015,
    linear_end=0.0195,
    num_timesteps_cond=1,
    log_every_t=200,
    timesteps=1000,
    first_stage_key="image",
    cond_stage_key="fmri",
    image_size=64,
    channels=3,
    cond_stage_trainable=True,
    conditioning_key="crossattn",
    monitor="val/loss",
    use_ema=False,
    unet_config={"target": "dc_ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": PUBLISHED_UNET},
    first_stage_config={
        "target": "dc_ldm.models.autoencoder.VQModelInterface",
        "params": {
            "embed_dim": 3,
            "n_embed": 8192,
            "ddconfig": PUBLISHED_VQ_DDCONFIG,
            "lossconfig": {"target": "torch.nn.Identity"},
        },
    },
    cond_stage_config={
        "target": "dc_ldm.modules.encoders.modules.ClassEmbedder",
        "params": {"n_classes": 1001, "embed_dim": 512, "key": "class_label"},
    },
)


def test_config_yaml_has_published_values():
    cfg = OmegaConf.load(CONFIG_YAML)
    assert OmegaConf.to_container(cfg) == {
        "model": {
            "base_learning_rate": 1e-4,
            "target": "dc_ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": PUBLISHED_LDM,
        }
    }
    with torch.device("meta"):
        embedder = instantiate_from_config(cfg.model.params.cond_stage_config)
    assert embedder.embedding.weight.shape == (1001, 512)


def test_bf16_autocast_forward_backward():
    model, t = _fixture_unet()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(t["x"], t["t"], context=t["context"])
        loss = out.float().square().mean()
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_group_norm_runs_in_float32_under_autocast():
    norm, x = GroupNorm32(2, 4), torch.randn(2, 4, 3, 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, norm(x.float()).to(torch.bfloat16), rtol=0, atol=0)


def test_activation_checkpointing_is_exact():
    results = []
    for use_checkpoint in (False, True):
        model, t = _fixture_unet(use_checkpoint=use_checkpoint)
        context = t["context"].clone().requires_grad_(True)
        out = model.train()(t["x"], t["t"], context=context)
        out.square().mean().backward()
        results.append((out, context.grad, {n: p.grad for n, p in model.named_parameters()}))
    (out0, ctx0, grads0), (out1, ctx1, grads1) = results
    torch.testing.assert_close(out1, out0)
    torch.testing.assert_close(ctx1, ctx0)
    torch.testing.assert_close(grads1, grads0)


@pytest.mark.parametrize(
    "use_time_cond, params, tokens",
    [
        (False, {}, 77),
        (True, {"global_pool": True}, 1),
        (True, {"context_tokens": 1}, 1),
        (True, {"context_tokens": 5}, 5),
    ],
)
def test_conditioning_variants(use_time_cond, params, tokens):
    """The context's length sizes double conditioning: one token, a Linear (the published `global_pool`); more, the
    published Conv1d pair over them."""
    config, t = load_fixture("unet")
    config = copy.deepcopy(config)
    config["params"].update(use_time_cond=use_time_cond, **params)
    model = instantiate_from_config(config)
    context = t["context"][:, :1].expand(-1, tokens, -1)
    assert isinstance(getattr(model, "time_embed_condtion", None), torch.nn.Linear) == (use_time_cond and tokens == 1)
    assert model(t["x"], t["t"], context=context).shape == t["out"].shape
    if use_time_cond and tokens > 1:
        assert model.time_embed_condtion[0].in_channels == tokens


def test_context_length_given_twice_must_agree():
    config, _ = load_fixture("unet")
    config = copy.deepcopy(config)
    config["params"].update(use_time_cond=True, global_pool=True, context_tokens=77)
    with pytest.raises(ValueError, match="global_pool means one context token"):
        instantiate_from_config(config)


def test_class_embedder_shapes():
    embedder = ClassEmbedder(embed_dim=8, n_classes=5, key="class_label")
    labels = torch.tensor([0, 4, 2])
    assert embedder({"class_label": labels}).shape == (3, 1, 8)
    torch.testing.assert_close(embedder(labels)[:, 0], embedder.embedding.weight[labels])


def test_instantiate_from_config_errors():
    with pytest.raises(KeyError, match="target"):
        instantiate_from_config({"params": {"embed_dim": 4}})
    with pytest.raises(UnsafeConfigError, match="refused config target 'dc_ldm.modules.nowhere.Model'"):
        instantiate_from_config({"target": "dc_ldm.modules.nowhere.Model"})
    with pytest.raises(UnsafeConfigError, match="NoSuchEmbedder"):
        instantiate_from_config({"target": "dc_ldm.modules.encoders.modules.NoSuchEmbedder"})
    published = "ldm.models.diffusion.ddpm.LatentDiffusion"  # CompVis configs name their own package
    assert resolve_target(published) == "dc_" + published


def test_malicious_ldm_config_runs_nothing(tmp_path):
    """A config.yaml whose target is os.system must be refused before anything is imported or called."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "label2img"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "model:\n  target: os.system\n  params:\n    command: touch " + str(marker) + "\n"
    )
    with pytest.raises(UnsafeConfigError, match=r"config\.yaml: key 'model\.target': refused .* 'os\.system'"):
        build_ldm_for_fmri(folder, {}, 32)
    nested = yaml.safe_load((REFERENCE_DIR / "ldm.json").read_text())["model"]
    nested["params"]["first_stage_config"] = {"target": "builtins.exec", "params": {"source": "open('x','w')"}}
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": nested}))
    with pytest.raises(UnsafeConfigError, match=r"key 'model\.params\.first_stage_config\.target'.*builtins\.exec"):
        load_ldm_config(folder / "config.yaml")
    with pytest.raises(UnsafeConfigError):
        instantiate_from_config({"target": "os.system", "params": {"command": f"touch {marker}"}})
    assert not marker.exists()
    with pytest.raises(NotImplementedError, match="num_classes"):
        _fixture_unet(num_classes=10)
