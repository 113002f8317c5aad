"""fMRI conditioners (`dc_ldm.conditioners`): the `cond_stage` reference fixture, the full-size
`cond_stage_model.*` schema, what every registry entry states (tokens, groups), the one-token variants, the
`patch_tokens` scheme and bad inputs."""

import types

import numpy as np
import pytest
import torch

from conftest import FORWARD_TOL, load_fixture, rel_err
from dc_ldm.conditioners import CONDITIONERS, NUM_CONTEXT_TOKENS
from errors import UserError
from published_configs import stage_b_conditioner

ENCODER_ARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
TINY = dict(patch_size=4, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0)


def test_cond_stage_reproduces_reference():
    cfg, ref = load_fixture("cond_stage")
    scheme = CONDITIONERS[stage_b_conditioner(cfg)]  # the fixture names it as the original does: global_pool
    model = scheme(cfg["num_voxels"], cfg["cond_dim"], **{k: cfg[k] for k in ENCODER_ARGS}).eval()
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
        model = CONDITIONERS["published"](mae_cfg["num_voxels"], context_dim, **{k: mae_cfg[k] for k in ENCODER_ARGS})
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


@pytest.mark.parametrize("name", list(CONDITIONERS))
def test_every_entry_states_its_tokens_and_groups(name):
    """What the UNet and Stage B rely on: the stated token count is the output's, the groups split every parameter
    (the null context aside) into the encoder and the read-out, and the entry's name is its key."""
    scheme = CONDITIONERS[name]
    torch.manual_seed(0)
    model = scheme(32, 8, cond_dropout=0.1, **TINY)
    out = model.eval()(torch.randn(3, 1, 32))
    assert scheme.name == name and out.shape == (3, scheme.context_tokens(32 // 4), 8) == (3, model.num_tokens, 8)
    groups = model.groups()
    assert groups["encoder"] == [model.mae] and groups["mapper"]
    grouped = [id(p) for ms in groups.values() for m in ms for p in m.parameters()]
    assert sorted(grouped + [id(model.null_context)]) == sorted(id(p) for p in model.parameters())
    assert model.unconditional(2).shape == (2, model.num_tokens, 8)


def test_global_pool_has_one_token_and_no_channel_mapper():
    torch.manual_seed(0)
    model = CONDITIONERS["global_pool"](32, 8, **TINY)
    assert not any(k.startswith("channel_mapper") for k in model.state_dict())
    assert model(torch.randn(3, 1, 32)).shape == (3, 1, 8) and model.num_tokens == 1
    assert CONDITIONERS["published"](32, 8, **TINY)(torch.randn(3, 1, 32)).shape == (3, NUM_CONTEXT_TOKENS, 8)


def test_patch_tokens_maps_each_encoder_token_alone():
    """One context token per patch of voxels: token i is dim_mapper of encoder token i (no mixing across tokens)."""
    torch.manual_seed(0)
    model = CONDITIONERS["patch_tokens"](32, 8, **TINY).eval()
    fmri = torch.randn(2, 1, 32)
    with torch.no_grad():
        out, tokens = model(fmri), model.mae(fmri)
    assert out.shape == (2, 8, 8)
    torch.testing.assert_close(out[:, 3], model.dim_mapper(tokens[:, 3]))


def test_published_names_map_onto_the_registry():
    assert stage_b_conditioner({"global_pool": True}) == "global_pool"
    assert stage_b_conditioner({"global_pool": False}) == stage_b_conditioner({}) == "published"
    assert stage_b_conditioner({"global_pool": True, "linear_pool": True}) == "linear_pool"  # ours, before
    assert stage_b_conditioner({"global_pool": True, "conditioner": "patch_tokens"}) == "patch_tokens"


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="at least 2 patches"):
        CONDITIONERS["published"](4, 8, **TINY)
    with pytest.raises(ValueError, match="model was built for 32"):
        CONDITIONERS["published"](32, 8, **TINY)(torch.randn(2, 1, 40))


def test_freezing_goes_by_group_and_an_empty_group_is_an_error(tmp_path):
    """Stage B's --freeze_encoder / --freeze_mapper fix the conditioner's groups by module; a scheme without such a
    group (here one whose read-out has no layers) is told so instead of training what it asked to keep fixed."""
    from dc_ldm.conditioners import Conditioner
    from dc_ldm.models.diffusion.ddpm import LatentDiffusion
    from errors import UserError

    class Identity(Conditioner):  # the encoder's tokens as the context, nothing to map
        name = "identity"

        @classmethod
        def context_tokens(cls, num_patches):
            return num_patches

        def build_read_out(self, num_patches, embed_dim, cond_dim):
            pass

        def read_out(self, tokens):
            return tokens

    model = LatentDiffusion.__new__(LatentDiffusion)  # only the parts set_trainable reads
    torch.nn.Module.__init__(model)
    model.model = torch.nn.Module()
    model.model.diffusion_model = types.SimpleNamespace(conditioning_modules=lambda: [])
    model.cond_stage_model = CONDITIONERS["published"](32, 8, **TINY)
    kept = {id(p) for p in model.set_trainable(frozen=("encoder",))}
    assert kept == {id(p) for m in model.cond_stage_model.groups()["mapper"] for p in m.parameters()}
    model.cond_stage_model = Identity(32, 16, **TINY)
    with pytest.raises(UserError, match="'identity' has no mapper to keep fixed"):
        model.set_trainable(frozen=("mapper",))


@pytest.mark.parametrize("name", ["linear_pool", "patch_tokens"])
def test_ridge_start_points_the_context_at_the_class_embeddings(name):
    """`--ridge_init`: the mapper starts as the ridge map from the encoder's tokens to the label LDM's class
    embedding of each training trial's label, so the context of a trial already resembles its class's row."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    patterns = rng.normal(size=(5, 32))
    fmri = torch.from_numpy(patterns[labels] + 0.3 * rng.normal(size=(200, 32))).float()[:, None]
    table = torch.randn(6, 8)  # 5 classes + the unconditional row
    model = CONDITIONERS[name](32, 8, **TINY).eval()

    def fit() -> float:
        with torch.no_grad():
            context = model(fmri).mean(1)  # (N, 8): the tokens' mean
        return float(torch.nn.functional.cosine_similarity(context, table[labels], dim=1).mean())

    before = fit()
    assert model.start_from_ridge(fmri, labels, table)["penalty"] > 0
    assert fit() > max(0.8, before + 0.3)
    with pytest.raises(UserError, match="ridge_init needs the class of every training image"):
        model.start_from_ridge(fmri, labels + 3, table)


def test_ridge_folds_keep_a_group_together():
    """Rows of one group (the tokens of one trial) stay in one fold: repeated rows then cannot make a small penalty
    look good by being seen in training and scored in the held-out fold (a weak signal in strong noise)."""
    from ridge import ALPHAS, fit_ridge

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40))
    y = 0.15 * x @ rng.normal(size=(40, 3)) + rng.normal(size=(60, 3))
    x, y = np.repeat(x, 5, 0), np.repeat(y, 5, 0)
    assert fit_ridge(x, y)[2] == ALPHAS[0]  # copies split across folds: memorising the noise looks like skill
    assert fit_ridge(x, y, groups=np.repeat(np.arange(60), 5))[2] >= 10 * ALPHAS[0]  # kept together: it does not
