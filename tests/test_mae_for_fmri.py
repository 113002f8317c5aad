"""Stage A model: MAEforFMRI and FMRIEncoder against the reference fixtures and the full-size schema, masking,
checkpoint loading (pos-embed interpolation, global pool), the helpers of sc_mbm/utils.py and bad inputs."""

import numpy as np
import pytest
import torch

from conftest import FORWARD_TOL, load_fixture, rel_err
from errors import CheckpointError
from runtime import attention_kind, use_attention
from sc_mbm.architecture import ARCH_FIELDS
from sc_mbm.mae_for_fmri import FMRIEncoder, MAEforFMRI, architecture_from_weights
from sc_mbm.utils import get_1d_sincos_pos_embed, interpolate_pos_embed, patchify

MAE_ARGS = ("num_voxels", *ARCH_FIELDS)
ENCODER_ARGS = ("num_voxels", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
TINY = dict(patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.0)
TINY_DECODER = dict(decoder_embed_dim=8, decoder_depth=2, decoder_num_heads=2)


def tiny_mae(num_voxels: int = 32, **kwargs) -> MAEforFMRI:
    return MAEforFMRI(num_voxels, **{**TINY, **TINY_DECODER, **kwargs})


def tiny_encoder(num_voxels: int = 32, **kwargs) -> FMRIEncoder:
    return FMRIEncoder(num_voxels, **{**TINY, **kwargs})


def shapes(module: torch.nn.Module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- reference fixtures


def test_mae_reproduces_reference():
    cfg, ref = load_fixture("mae_fmri")
    model = MAEforFMRI(**{k: cfg[k] for k in MAE_ARGS}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(ref["fmri"], cfg["mask_ratio"], noise=ref["noise"])
        loss, pred, mask_fwd = model(ref["fmri"], mask_ratio=cfg["mask_ratio"], noise=ref["noise"])
    assert torch.equal(mask, ref["mask"]) and torch.equal(mask_fwd, ref["mask"])
    assert torch.equal(ids_restore, ref["ids_restore"])
    for name, out in [("latent", latent), ("pred", pred), ("loss", loss)]:
        assert out.shape == ref[name].shape, name
        assert rel_err(out, ref[name]) <= FORWARD_TOL, name


def test_encoder_reproduces_reference():
    cfg, ref = load_fixture("fmri_encoder")
    encoder = FMRIEncoder(**{k: cfg[k] for k in ENCODER_ARGS}, global_pool=cfg["global_pool"]).eval()
    encoder.load_checkpoint(ref["mae_state_dict"])
    with torch.no_grad():
        latent = encoder(ref["fmri"])
    assert latent.shape == ref["latent"].shape
    assert rel_err(latent, ref["latent"]) <= FORWARD_TOL


# ---------------------------------------------------------------- full-size schemas (meta device)


def test_mae_schema(schemas):
    schema = schemas["mae_fmri"]
    with torch.device("meta"):
        model = MAEforFMRI(**schema["config"])
    assert shapes(model) == schema["keys"]


def test_encoder_schema(schemas):
    schema = schemas["finetuned_fmri_ldm"]
    prefix = "cond_stage_model.mae."
    expected = {k[len(prefix) :]: v for k, v in schema["keys"].items() if k.startswith(prefix)}
    mae_cfg = schemas["mae_fmri"]["config"]  # the finetuned model's encoder has the published Stage A architecture
    with torch.device("meta"):
        encoder = FMRIEncoder(**{k: mae_cfg[k] for k in ENCODER_ARGS})
    assert shapes(encoder) == expected


# ---------------------------------------------------------------- masking and loss


def test_masking_keeps_the_smallest_noise_in_ascending_order():
    model = tiny_mae()
    x = torch.arange(8.0).view(1, 8, 1).expand(2, 8, 3)  # token i holds the value i
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])
    kept, mask, ids_restore = model.random_masking(x, 0.75, noise)
    assert kept[:, :, 0].tolist() == [[1.0, 5.0], [0.0, 1.0]]  # int(8 * 0.25) = 2 kept, ascending noise
    assert mask.tolist() == [[1, 0, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]]
    assert torch.equal(ids_restore, torch.argsort(torch.argsort(noise, dim=1), dim=1))


def test_drawn_masking_and_training_step():
    torch.manual_seed(0)
    model = tiny_mae()
    fmri = torch.randn(3, 1, 32)
    loss, pred, mask = model(fmri, mask_ratio=0.75)
    assert pred.shape == (3, 8, 4) and mask.shape == (3, 8)
    assert mask.sum(dim=1).tolist() == [6.0, 6.0, 6.0]
    per_patch = (pred - patchify(fmri, 4)).pow(2).mean(-1)
    assert torch.allclose(loss, (per_patch * mask).sum() / mask.sum())
    loss.backward()
    assert model.cls_token.grad is not None and model.mask_token.grad is not None
    assert model.pos_embed.grad is None and model.decoder_pos_embed.grad is None


def test_no_masking_gives_zero_loss():
    loss, _, mask = tiny_mae()(torch.randn(2, 1, 32), mask_ratio=0.0)
    assert mask.sum() == 0 and loss.item() == 0.0


def test_runs_under_bf16_autocast():
    model = tiny_mae()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = model(torch.randn(2, 1, 32))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and mask.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(model.patch_embed.proj.weight.grad).all()


def test_attention_is_explicit_only_for_bf16_on_a_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attention_kind(cpu, "bf16") == "explicit"
    assert [attention_kind(cpu, p) for p in ("fp32", "fp16")] == ["sdpa", "sdpa"]
    assert [attention_kind(cuda, p) for p in ("bf16", "fp16", "fp32")] == ["sdpa"] * 3
    with pytest.raises(ValueError, match="'sdpa' or 'explicit'"):
        use_attention(tiny_mae(), "flash")


def test_explicit_attention_computes_what_sdpa_does(monkeypatch):
    torch.manual_seed(0)
    model, fmri, noise = tiny_mae(), torch.randn(3, 1, 32), torch.rand(3, 8)
    outputs, calls, sdpa = {}, [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    for kind in ("sdpa", "explicit"):
        model.zero_grad()
        use_attention(model, kind)
        calls.clear()
        loss, pred, _ = model(fmri, mask_ratio=0.75, noise=noise)
        loss.backward()
        assert bool(calls) == (kind == "sdpa")  # the explicit path never reaches SDPA
        outputs[kind] = (pred.detach(), model.blocks[0].attn.qkv.weight.grad.clone())
    for ours, theirs in zip(outputs["explicit"], outputs["sdpa"], strict=True):
        assert rel_err(ours, theirs) < 1e-5


def test_focus_range_masks_inside_the_range():
    torch.manual_seed(0)
    model = tiny_mae(focus_range=(0, 16), focus_rate=1.0)  # patches 0..3 of 8
    _, mask, _ = model.forward_encoder(torch.randn(16, 1, 32), mask_ratio=0.5)  # 4 masked per sample
    assert mask[:, :4].sum().item() == 64 and mask[:, 4:].sum().item() == 0
    noise = torch.linspace(0, 1, 8).repeat(2, 1)  # explicit noise decides alone: the last 4 patches masked
    _, mask, _ = model.forward_encoder(torch.randn(2, 1, 32), mask_ratio=0.5, noise=noise)
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]] * 2


def test_architecture_is_read_off_the_weights():
    model = MAEforFMRI(
        num_voxels=48,
        patch_size=8,
        embed_dim=16,
        depth=3,
        num_heads=2,
        decoder_embed_dim=12,
        decoder_depth=2,
        decoder_num_heads=3,
        mlp_ratio=2.0,
    )
    arch = architecture_from_weights(model.state_dict())
    assert arch == {
        "patch_size": 8,
        "embed_dim": 16,
        "depth": 3,
        "mlp_ratio": 2.0,
        "num_voxels": 48,
        "decoder_embed_dim": 12,
        "decoder_depth": 2,
    }  # never the head counts: not determinable
    prefixed = {f"cond_stage_model.mae.{k}": v for k, v in model.state_dict().items() if not k.startswith("decoder")}
    assert architecture_from_weights(prefixed, "cond_stage_model.mae.")["depth"] == 3


def test_initialisation():
    model = tiny_mae()
    sincos = get_1d_sincos_pos_embed(16, 8, cls_token=True)
    assert torch.equal(model.pos_embed[0], sincos) and not model.pos_embed.requires_grad
    assert torch.equal(model.decoder_pos_embed[0], get_1d_sincos_pos_embed(8, 8, cls_token=True))
    assert model.cls_token.abs().sum() > 0 and model.mask_token.abs().sum() > 0
    encoder = tiny_encoder()
    assert not encoder.cls_token.requires_grad and not encoder.mask_token.requires_grad  # unused by its forward


# ---------------------------------------------------------------- checkpoint loading


def test_load_interpolates_pos_embed_for_another_voxel_count():
    mae = tiny_mae(num_voxels=32)
    encoder = tiny_encoder(num_voxels=48)
    encoder.load_checkpoint(mae.state_dict())
    assert encoder.pos_embed.shape == (1, 1 + 12, 16)
    assert torch.equal(encoder.pos_embed, interpolate_pos_embed(mae.pos_embed.detach(), 12))
    assert torch.equal(encoder.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)
    assert encoder(torch.randn(2, 1, 48)).shape == (2, 12, 16)
    same = tiny_encoder(num_voxels=32)
    same.load_checkpoint(mae.state_dict())
    assert torch.equal(same.pos_embed, mae.pos_embed)


def test_interpolate_pos_embed_is_linear_and_keeps_cls():
    pos = torch.tensor([[[9.0], [0.0], [1.0]]])  # cls, then two patch positions
    assert interpolate_pos_embed(pos, 4).flatten().tolist() == [9.0, 0.0, 0.25, 0.75, 1.0]
    assert interpolate_pos_embed(pos, 2) is pos
    with pytest.raises(ValueError, match=r"\(1, 1 \+ L, D\)"):
        interpolate_pos_embed(pos[0], 4)


def test_global_pool_load_leaves_out_only_the_final_norm():
    torch.manual_seed(0)
    mae = tiny_mae()
    with torch.no_grad():
        for name, param in mae.named_parameters():
            if "norm" in name:
                param.normal_()
    pooled = tiny_encoder(global_pool=True)
    pooled.load_checkpoint(mae.state_dict())
    for i, block in enumerate(pooled.blocks):
        assert torch.equal(block.norm1.weight, mae.blocks[i].norm1.weight)
        assert torch.equal(block.norm2.bias, mae.blocks[i].norm2.bias)
    assert torch.equal(pooled.norm.weight, torch.ones(16)) and torch.equal(pooled.norm.bias, torch.zeros(16))
    plain = tiny_encoder()
    plain.load_checkpoint(mae.state_dict())
    assert torch.equal(plain.norm.weight, mae.norm.weight)
    fmri = torch.randn(2, 1, 32)
    with torch.no_grad():
        tokens = plain.embed(fmri)
        for block in plain.blocks:
            tokens = block(tokens)
        expected = pooled.norm(tokens.mean(dim=1, keepdim=True))
        assert torch.allclose(pooled(fmri), expected, atol=1e-6) and expected.shape == (2, 1, 16)


def test_load_rejects_checkpoints_that_do_not_fit():
    state = tiny_mae().state_dict()
    lacking = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"missing keys \[blocks\.1\.attn\.proj\.bias"):
        tiny_encoder().load_checkpoint(lacking)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[blocks\.2\."):
        tiny_encoder().load_checkpoint(tiny_mae(depth=3).state_dict())
    with pytest.raises(CheckpointError, match=r"wrong shape.*cls_token \(1, 1, 32\) \(expected \(1, 1, 16\)\)"):
        tiny_encoder().load_checkpoint(tiny_mae(embed_dim=32).state_dict())


# ---------------------------------------------------------------- bad input


def test_bad_fmri_is_rejected():
    model, encoder = tiny_mae(), tiny_encoder()
    with pytest.raises(ValueError, match="fewer than one patch"):
        model(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        encoder(torch.randn(2, 1, 30))
    with pytest.raises(ValueError, match="model was built for 32"):
        model(torch.randn(2, 1, 36))
    with pytest.raises(ValueError, match=r"shape \(N, 1, V\)"):
        encoder(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"noise must have shape \(N, L\) = \(2, 8\)"):
        model(torch.randn(2, 1, 32), noise=torch.rand(2, 7))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(2, 1, 32), mask_ratio=1.5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: tiny_mae(num_voxels=3), "shorter than one patch"),
        (lambda: tiny_encoder(num_voxels=30), r"multiple of patch_size \(4\); pad .* to 32"),
        (lambda: tiny_mae(num_heads=3), r"embed_dim \(16\) must be divisible"),
        (lambda: tiny_mae(decoder_num_heads=3), r"decoder_embed_dim \(8\) must be divisible"),
        (lambda: tiny_encoder(embed_dim=18, num_heads=4), r"embed_dim \(18\) must be divisible"),
        (lambda: tiny_mae(focus_range=(0, 8)), "given together"),
    ],
)
def test_bad_configuration_is_rejected(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------- helpers


def test_patchify_round_trip():
    fmri = torch.arange(24.0).view(2, 1, 12)
    patches = patchify(fmri, 4)
    assert patches.shape == (2, 3, 4) and patches[1, 2].tolist() == [20.0, 21.0, 22.0, 23.0]
    assert torch.equal(patches.flatten(1).unsqueeze(1), fmri)  # the patches are the fMRI in order
    with pytest.raises(ValueError, match="multiple of 5"):
        patchify(fmri, 5)


def test_sincos_pos_embed_formula():
    emb = get_1d_sincos_pos_embed(8, 5, cls_token=True)
    assert emb.shape == (6, 8) and emb.dtype == torch.float32 and emb[0].abs().sum() == 0
    pos, i = np.arange(5.0)[:, None], np.arange(4.0)[None, :]
    angles = pos / 10000 ** (2 * i / 8)
    np.testing.assert_allclose(emb[1:].numpy(), np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-7)
    with pytest.raises(ValueError, match="even"):
        get_1d_sincos_pos_embed(7, 5)
