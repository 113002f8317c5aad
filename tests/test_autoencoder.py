"""First stages: VQ reference numbers, published key sets, KL posterior, straight-through gradient, training, bf16."""

import logging

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, load_fixture, rel_err
from dc_ldm.models.autoencoder import AutoencoderKL, VQModel, VQModelInterface
from dc_ldm.modules.vqvae.quantize import VectorQuantizer
from dc_ldm.util import instantiate_from_config

CONFIG_YAML = ROOT / "pretrains" / "ldm" / "label2img" / "config.yaml"
PREFIX = "first_stage_model."
TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], resolution=16, in_channels=3, out_ch=3)
IDENTITY_LOSS = {"target": "torch.nn.Identity"}


def _tiny_vq(cls=VQModelInterface, **ddconfig) -> VQModel:
    torch.manual_seed(0)
    return cls(embed_dim=4, n_embed=16, ddconfig={**TINY, "double_z": False, "z_channels": 4, **ddconfig})


def _tiny_kl() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL({**TINY, "double_z": True, "z_channels": 4}, IDENTITY_LOSS, embed_dim=4)


def _images(n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_vq_matches_reference():
    config, t = load_fixture("vq")
    model = instantiate_from_config(config).eval()
    model.load_state_dict(t["state_dict"], strict=True)
    with torch.no_grad():
        h = model.encode(t["x"])
        quant, _, (_, _, indices) = model.quantize(h)
        decoded = model.decode(h)
        decoded_not_quantized = model.decode(h, force_not_quantize=True)
    assert rel_err(h, t["h"]) <= 1e-4
    assert rel_err(quant, t["quant"]) <= 1e-4
    assert indices.shape == t["indices"].shape and torch.equal(indices, t["indices"])
    assert rel_err(decoded, t["decoded"]) <= 1e-3
    assert rel_err(decoded_not_quantized, t["decoded_not_quantized"]) <= 1e-3


@pytest.mark.parametrize("schema_name", ["label2img_ckpt", "finetuned_fmri_ldm"])
def test_published_first_stage_keys_and_shapes(schemas, schema_name):
    """The mid-block attention exists although attn_resolutions is empty."""
    config = OmegaConf.load(CONFIG_YAML).model.params.first_stage_config
    with torch.device("meta"):
        model = instantiate_from_config(config)
    expected = {k[len(PREFIX) :]: v for k, v in schemas[schema_name]["keys"].items() if k.startswith(PREFIX)}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_vq_interface_shapes_and_quantised_decode():
    model = _tiny_vq().eval()
    x = _images()
    with torch.no_grad():
        h = model.encode(x)
        quant, _, (_, _, indices) = model.quantize(h)
        assert h.shape == (2, 4, 8, 8) and indices.shape == (2 * 8 * 8,)
        # every quantised vector is a codebook row, and decode(h) is decode(quant) without re-quantising
        assert torch.allclose(quant.permute(0, 2, 3, 1).reshape(-1, 4), model.quantize.embedding.weight[indices])
        assert torch.allclose(model.decode(h), model.decode(quant, force_not_quantize=True), atol=1e-6)
        assert not torch.allclose(model.decode(h), model.decode(h, force_not_quantize=True))


def test_sane_index_shape():
    quantizer = VectorQuantizer(16, 4, sane_index_shape=True)
    _, _, (_, _, indices) = quantizer(torch.randn(2, 4, 3, 5))
    assert indices.shape == (2, 3, 5)


def test_straight_through_gradient_reaches_encoder():
    model = _tiny_vq()
    x = _images()
    model.decode(model.encode(x)).square().mean().backward()  # decode quantises: argmin has no gradient
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad is None  # only the codebook loss moves the codebook
    model.zero_grad()
    _, codebook_loss, _ = model.quantize(model.encode(x))
    codebook_loss.backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # commitment term


def test_training_loss_decreases():
    model = _tiny_vq(VQModel)
    x = _images(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, logs = model.training_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(logs) == {"loss", "rec_loss", "codebook_loss", "perplexity"}
    assert 1.0 <= logs["perplexity"] <= model.quantize.n_embed
    assert losses[-1] < 0.7 * losses[0]


def test_vq_model_forward_matches_encode_decode():
    model = _tiny_vq(VQModel).eval()
    x = _images()
    with torch.no_grad():
        rec, loss = model(x)
        quant, loss2, _ = model.encode(x)
        assert torch.equal(rec, model.decode(quant)) and torch.equal(loss, loss2)
        l2, _ = model.training_loss(x, reconstruction="l2")
        assert torch.allclose(l2, (rec - x).square().mean() + loss)


def test_kl_shapes_and_seeded_sample():
    model = _tiny_kl().eval()
    with torch.no_grad():
        posterior = model.encode(_images())
        assert posterior.mean.shape == posterior.std.shape == (2, 4, 8, 8)
        a = posterior.sample(torch.Generator().manual_seed(3))
        b = posterior.sample(torch.Generator().manual_seed(3))
        c = posterior.sample(torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert torch.equal(posterior.mode(), posterior.mean)
        kl = posterior.kl()
        assert kl.shape == (2,) and (kl >= 0).all()
        assert model.decode(a).shape == (2, 3, 16, 16)
        rec, _ = model(_images(), generator=torch.Generator().manual_seed(3))
        assert torch.allclose(rec, model.decode(a))


def test_channels_last_matches_contiguous():
    model = _tiny_vq().eval()
    x = _images()
    with torch.no_grad():
        ref = model.decode(model.encode(x), force_not_quantize=True)
        model = model.to(memory_format=torch.channels_last)
        out = model.decode(model.encode(x.to(memory_format=torch.channels_last)), force_not_quantize=True)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("build", [_tiny_vq, _tiny_kl])
def test_bf16_autocast_forward_is_finite(build):
    model = build().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if isinstance(model, AutoencoderKL):
            out = model.decode(model.encode(_images()).sample(torch.Generator().manual_seed(0)))
        else:
            h = model.encode(_images())
            _, loss, _ = model.quantize(h)
            assert loss.dtype == torch.float32 and torch.isfinite(loss)
            out = model.decode(h)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out.float()).all()


def test_bad_options_fail_clearly(caplog):
    with pytest.raises(ValueError, match="unsupported keys \\['resamp_with_conv'\\]"):
        _tiny_vq(resamp_with_conv=False)
    with pytest.raises(ValueError, match="num_res_blocks must be >= 1"):
        _tiny_vq(num_res_blocks=0)
    with pytest.raises(ValueError, match="remap"):
        VQModelInterface(4, 16, {**TINY, "z_channels": 4, "double_z": False}, IDENTITY_LOSS, remap="codes.npy")
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL({**TINY, "double_z": False, "z_channels": 4}, IDENTITY_LOSS, embed_dim=4)
    with pytest.raises(ValueError, match="embed_dim 4"):
        VectorQuantizer(16, 4)(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        _tiny_vq().training_loss(_images(), reconstruction="lpips")
    with caplog.at_level(logging.WARNING, logger="dc_ldm.models.autoencoder"):
        ddconfig = {**TINY, "double_z": False, "z_channels": 4}
        VQModelInterface(4, 16, ddconfig, {"target": "taming.modules.losses.VQLPIPSWithDiscriminator"})
    assert "is ignored" in caplog.text
