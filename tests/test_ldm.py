"""LatentDiffusion: the `ldm` reference fixture, the full-size key schema, checkpoint loading, the Stage B
optimiser, EMA keys and bf16 autocast (CPU, tiny)."""

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import FORWARD_TOL, ROOT, SAMPLER_TOL, load_fixture, rel_err
from dc_ldm.conditioners import CONDITIONERS
from dc_ldm.models.diffusion.ddpm import SCHEDULE_BUFFERS, LatentDiffusion, load_ldm_checkpoint
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.models.diffusion.samplers import SAMPLERS
from dc_ldm.util import instantiate_from_config
from errors import CheckpointError

COND_PATH = ("attn2", "norm2", "time_embed_condtion")


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("ldm")


def build(cfg: dict, fmri_cond: bool = True, **params) -> LatentDiffusion:
    """The fixture's LatentDiffusion (extra `params` override its config), cond stage swapped for the fMRI one."""
    model_cfg = copy.deepcopy(cfg["model"])
    model_cfg["params"].update(params)
    model = instantiate_from_config(model_cfg)
    if fmri_cond:
        mae = cfg["mae"]
        model.cond_stage_model = CONDITIONERS["published"](
            num_voxels=mae["num_voxels"],
            patch_size=mae["patch_size"],
            embed_dim=mae["embed_dim"],
            depth=mae["depth"],
            num_heads=mae["num_heads"],
            mlp_ratio=mae["mlp_ratio"],
            cond_dim=model_cfg["params"]["unet_config"]["params"]["context_dim"],
        )
    return model


def build_loaded(cfg: dict, ref: dict) -> LatentDiffusion:
    """`build` with the fixture's weights (a fresh UNet's zero output layer would give zero gradients)."""
    model = build(cfg)
    model.load_state_dict(ref["state_dict"], strict=True)
    return model


@pytest.fixture(scope="module")
def ref_model(fixture):
    return build_loaded(*fixture).eval()


def test_schedule_buffers(fixture):
    cfg, ref = fixture
    model = build(cfg)
    buffers = dict(model.named_buffers())
    assert [k for k in buffers if "." not in k] == list(SCHEDULE_BUFFERS)
    stored = {k: v for k, v in ref["state_dict"].items() if "." not in k}
    assert set(stored) == set(SCHEDULE_BUFFERS)
    for name in SCHEDULE_BUFFERS:
        assert buffers[name].dtype == torch.float32
        for expected in (stored[name], ref.get(name, stored[name])):  # some are also stored on their own
            assert rel_err(buffers[name], expected) <= 1e-6, name


def test_reference_forward(fixture, ref_model):
    cfg, ref = fixture
    m = ref_model
    with torch.no_grad():
        z = m.get_first_stage_encoding(m.encode_first_stage(ref["image"]))
        cond = m.get_learned_conditioning(ref["fmri"])
        x_noisy = m.q_sample(ref["z"], ref["t"], ref["noise"])
        eps = m.apply_model(ref["x_noisy"], ref["t"], ref["cond"])
        loss = m.p_losses(ref["z"], ref["cond"], ref["t"], ref["noise"])
    for name, out in [("z", z), ("cond", cond), ("x_noisy", x_noisy), ("eps", eps), ("loss", loss)]:
        assert out.shape == ref[name].shape, name
        assert rel_err(out, ref[name]) <= FORWARD_TOL, name


@pytest.mark.parametrize("name", ["plms", "ddim"])  # the published samplers, which the fixture pins
def test_reference_samplers(fixture, ref_model, name):
    cfg, ref = fixture
    sampler = SAMPLERS[name](ref_model)
    samples, _ = sampler.sample(
        S=cfg["sampler_steps"],
        batch_size=ref["x_T"].shape[0],
        shape=tuple(ref["z"].shape[1:]),
        conditioning=ref["cond"],
        x_T=ref["x_T"],
        eta=cfg["eta"],
        verbose=False,
    )
    assert torch.equal(sampler.ddim_timesteps, ref["ddim_timesteps"])
    assert rel_err(samples, ref[name]) <= SAMPLER_TOL


def test_reference_decode(fixture, ref_model):
    _, ref = fixture
    assert rel_err(ref_model.decode_first_stage(ref["plms"]), ref["decoded"]) <= SAMPLER_TOL


def test_full_size_keys_match_published_checkpoint(schemas):
    config = OmegaConf.load(ROOT / "pretrains" / "ldm" / "label2img" / "config.yaml")
    with torch.device("meta"):
        model = instantiate_from_config(config.model)
    assert isinstance(model, LatentDiffusion)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == schemas["label2img_ckpt"]["keys"]


def test_load_published_style_checkpoint(fixture, tmp_path: Path):
    cfg, _ = fixture
    published = build(cfg, fmri_cond=False)  # the class-conditioned model a model.ckpt holds
    state = published.state_dict()
    # an older checkpoint without the double-conditioning projection, trained with EMA
    state = {k: v for k, v in state.items() if "time_embed_condtion" not in k}
    state.update({"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(7)})
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 1200, "optimizer_states": [{}]}, path)

    model = build(cfg)
    fmri_before = copy.deepcopy(model.cond_stage_model.state_dict())
    report = load_ldm_checkpoint(model, path)

    assert report.ignored == ["cond_stage_model.embedding.weight"]
    assert sorted(report.unexpected) == ["model_ema.decay", "model_ema.num_updates"]
    assert {k for k in report.missing if not k.startswith("cond_stage_model.")} == {
        k for k in model.state_dict() if "time_embed_condtion" in k
    }
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)
    assert all(torch.equal(own[f"cond_stage_model.{k}"], v) for k, v in fmri_before.items())
    summary = str(report).splitlines()
    n_tec = sum("time_embed_condtion" in k for k in own)
    assert (
        f"  missing: model.diffusion_model.time_embed_condtion.* ({n_tec} keys) — new, trained in Stage B" in summary
    )
    assert "  unexpected: model_ema.* (2 keys)" in summary
    assert any(s.startswith("  ignored: cond_stage_model.embedding.weight — class-embedding") for s in summary)
    assert len(summary) < 12  # grouped, not one line per key

    # the constructor's ckpt_path loads the same way (class embedder included); a config's is ignored (dc_ldm.util)
    again = LatentDiffusion(**{**copy.deepcopy(cfg["model"]["params"]), "ckpt_path": str(path)})
    assert torch.equal(again.cond_stage_model.embedding.weight, state["cond_stage_model.embedding.weight"])


def test_load_rejects_bad_checkpoints(fixture, tmp_path: Path):
    cfg, _ = fixture
    model = build(cfg)
    torch.save({"epoch": 1, "state_dict": {"betas": "not a tensor"}}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="bad.ckpt.*state_dict"):
        load_ldm_checkpoint(model, tmp_path / "bad.ckpt")
    torch.save({"state_dict": {"betas": torch.zeros(5)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"other.ckpt.*betas: file \(5,\) vs model \(1000,\)"):
        load_ldm_checkpoint(model, tmp_path / "other.ckpt")


def test_set_trainable_selects_the_conditioning_path(fixture):
    cfg, ref = fixture
    model = build_loaded(cfg, ref)
    params = model.set_trainable(cond_path_only=True)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = [names[id(p)] for p in params]
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith("cond_stage_model.") or (n.startswith("model.") and any(s in n for s in COND_PATH))
    }
    assert len(chosen) == len(set(chosen)) and set(chosen) == expected
    assert {s for s in COND_PATH if any(s in n and n.startswith("model.") for n in chosen)} == set(COND_PATH)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected

    model.train()
    assert not model.first_stage_model.training  # the autoencoder never leaves eval mode
    model(*model.get_input({"image": ref["image"], "fmri": ref["fmri"]})).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad <= expected
    assert all(n.endswith("_token") for n in expected - with_grad)  # the encoder's cls/mask tokens are unused

    chosen = {names[id(p)] for p in model.set_trainable(cond_path_only=False)}  # the published narrowing
    assert chosen == {n for n in names.values() if not n.startswith(("first_stage_model.", "model_ema."))}


def test_bf16_autocast_forward_backward_and_sampling(fixture):
    cfg, ref = fixture
    model = build_loaded(cfg, ref)
    model.set_trainable(cond_path_only=True)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(*model.get_input({"image": ref["image"], "fmri": ref["fmri"]}))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "attn2" in n)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.get_learned_conditioning(ref["fmri"])
        z, _ = PLMSSampler(model).sample(S=3, batch_size=2, shape=model.latent_shape, conditioning=cond, verbose=False)
        images = model.decode_first_stage(z)
    assert z.dtype == torch.float32 and torch.isfinite(images.float()).all()


def test_ema_keys_load_and_update(fixture):
    cfg, ref = fixture
    model = build(cfg, use_ema=True)
    ema_keys = {k for k in model.state_dict() if k.startswith("model_ema.")}
    assert ema_keys == {"model_ema.decay", "model_ema.num_updates"} | {
        f"model_ema.{n.replace('.', '')}" for n, _ in model.model.named_parameters()
    }
    # a checkpoint with CompVis EMA keys (shadows = the fixture's UNet weights) loads strictly
    state = dict(ref["state_dict"])
    unet = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    state.update({f"model_ema.{k.replace('.', '')}": v for k, v in unet.items()})
    state.update(
        {"model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(0, dtype=torch.int32)}
    )
    model.load_state_dict(state, strict=True)
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}

    optimizer = torch.optim.AdamW(model.set_trainable(cond_path_only=True), lr=1e-3)
    model(*model.get_input({"image": ref["image"], "fmri": ref["fmri"]})).backward()
    optimizer.step()
    model.model_ema(model.model)
    assert int(model.model_ema.num_updates) == 1
    shadows = dict(model.model_ema.named_buffers())
    changed = [n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(any(s in n for s in COND_PATH) for n in changed)
    decay = min(0.9999, 2 / 11)  # warm-up after one update
    for n in changed:
        expected = before[n] + (1 - decay) * (model.model.get_parameter(n).detach() - before[n])
        torch.testing.assert_close(shadows[n.replace(".", "")], expected)
    reloaded = build(cfg, use_ema=True)
    reloaded.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("global_pool", [False, True], ids=["77 tokens", "global_pool"])
def test_time_conditioning_starts_as_published_unless_asked(fixture, global_pool, tmp_path: Path):
    """The label LDM's file has no time_embed_condtion: the original keeps PyTorch's default initialisation (it
    loads non-strictly); `time_cond_start="zero"` (ours) zeroes its last Linear, everything else the same."""
    import yaml

    from dc_ldm.ldm_for_fmri import build_ldm_for_fmri

    cfg, _ = fixture
    folder = tmp_path / "label2img"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": cfg["model"]}))
    state = {k: v for k, v in build(cfg, fmri_cond=False).state_dict().items() if "time_embed_condtion" not in k}
    torch.save({"state_dict": state}, folder / "model.ckpt")
    mae = {k: cfg["mae"][k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")}

    def built(start: str) -> LatentDiffusion:
        torch.manual_seed(0)
        conditioner = "global_pool" if global_pool else "published"
        return build_ldm_for_fmri(
            folder, mae, cfg["mae"]["num_voxels"], conditioner=conditioner, time_cond_start=start
        )

    published, zero = built("published"), built("zero")
    torch.manual_seed(0)  # the same construction, nothing loaded: PyTorch's default initialisation
    fresh = instantiate_from_config(
        {**cfg["model"], "params": {**cfg["model"]["params"], "unet_config": _unet(cfg, global_pool)}}
    )
    tec = "model.diffusion_model.time_embed_condtion."
    start = {k: v for k, v in published.state_dict().items() if k.startswith(tec)}
    assert start and all(torch.equal(v, fresh.state_dict()[k]) for k, v in start.items())
    last = sorted({k.rsplit(".", 1)[0] for k in start})[-1]
    assert torch.count_nonzero(published.state_dict()[f"{last}.weight"]) > 0
    assert not torch.count_nonzero(zero.state_dict()[f"{last}.weight"]) and not torch.count_nonzero(
        zero.state_dict()[f"{last}.bias"]
    )
    others = [k for k in published.state_dict() if not k.startswith((tec, "cond_stage_model."))]
    assert all(torch.equal(published.state_dict()[k], zero.state_dict()[k]) for k in others)


def _unet(cfg: dict, global_pool: bool) -> dict:
    unet = copy.deepcopy(cfg["model"]["params"]["unet_config"])
    unet["params"].update(use_time_cond=True, global_pool=global_pool)
    return unet


def test_another_context_length_starts_double_conditioning_new(fixture, tmp_path: Path):
    """A label LDM file whose double conditioning reads the published 77 tokens: the published conditioner loads
    those layers, a conditioner of another token count (patch_tokens) starts them new instead of failing on their
    shape (and under `time_cond_start="zero"` from cross-attention only)."""
    import yaml

    from dc_ldm.ldm_for_fmri import build_ldm_for_fmri

    cfg, _ = fixture
    folder = tmp_path / "label2img"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": cfg["model"]}))
    torch.manual_seed(1)
    label_ldm = instantiate_from_config(
        {**cfg["model"], "params": {**cfg["model"]["params"], "unet_config": _unet(cfg, False)}}
    )
    state = {k: v for k, v in label_ldm.state_dict().items() if not k.startswith("cond_stage_model.")}
    torch.save({"state_dict": state}, folder / "model.ckpt")
    mae = {k: cfg["mae"][k] for k in ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")}
    num_voxels = cfg["mae"]["num_voxels"]
    tec = "model.diffusion_model.time_embed_condtion.0.weight"
    published = build_ldm_for_fmri(folder, mae, num_voxels, conditioner="published")
    assert torch.equal(published.state_dict()[tec], state[tec]) and state[tec].shape[1] == 77
    tokens = build_ldm_for_fmri(folder, mae, num_voxels, conditioner="patch_tokens", time_cond_start="zero")
    layers = tokens.model.diffusion_model.time_embed_condtion
    assert layers[0].in_channels == num_voxels // mae["patch_size"] != 77
    assert not layers[-1].weight.any() and not layers[-1].bias.any()
