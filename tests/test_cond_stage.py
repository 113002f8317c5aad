"""fMRI conditioner (FMRICondStage): the `cond_stage` reference fixture, the full-size `cond_stage_model.*` schema,
the global-pool variant and bad inputs."""

import pytest
import torch

from conftest import FORWARD_TOL, load_fixture, rel_err
from dc_ldm.ldm_for_fmri import NUM_CONTEXT_TOKENS, FMRICondStage

COND_ARGS = ("num_voxels", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "cond_dim", "global_pool")
TINY = dict(patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0, cond_dim=8)


def test_cond_stage_reproduces_reference():
    cfg, ref = load_fixture("cond_stage")
    model = FMRICondStage(**{k: cfg[k] for k in COND_ARGS}).eval()
    model.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        out = model(ref["fmri"])
    assert out.shape == ref["out"].shape == (ref["fmri"].shape[0], NUM_CONTEXT_TOKENS, cfg["cond_dim"])
    assert rel_err(out, ref["out"]) <= FORWARD_TOL


def test_cond_stage_schema(schemas):
    schema = schemas["finetuned_fmri_ldm"]
    prefix = "cond_stage_model."
    expected = {k[len(prefix) :]: v for k, v in schema["keys"].items() if k.startswith(prefix)}
    mae_cfg = schemas["mae_fmri"]["config"]  # the published Stage A architecture
    context_dim = expected["dim_mapper.weight"][0]
    with torch.device("meta"):
        model = FMRICondStage(**{k: mae_cfg[k] for k in COND_ARGS[:6]}, cond_dim=context_dim, global_pool=False)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_global_pool_has_one_token_and_no_channel_mapper():
    torch.manual_seed(0)
    model = FMRICondStage(32, **TINY, global_pool=True)
    assert not any(k.startswith("channel_mapper") for k in model.state_dict())
    out = model(torch.randn(3, 1, 32))
    assert out.shape == (3, 1, 8) and model.num_tokens == 1
    assert FMRICondStage(32, **TINY)(torch.randn(3, 1, 32)).shape == (3, NUM_CONTEXT_TOKENS, 8)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least 2 patches"):
        FMRICondStage(4, **TINY)
    with pytest.raises(ValueError, match="model was built for 32"):
        FMRICondStage(32, **TINY)(torch.randn(2, 1, 40))
