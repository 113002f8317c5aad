"""PLMS and DDIM samplers on a toy ε-model (CPU, tiny): schedule, reproducibility, guidance, bad input.

Numerical equality with the published samplers is checked on the `ldm` reference fixture in test_ldm.py.
"""

import pytest
import torch
from torch import nn

from dc_ldm.models.diffusion.ddim import DDIMSampler
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.models.diffusion.samplers import SAMPLERS
from dc_ldm.models.diffusion.sampling_util import make_ddim_timesteps
from dc_ldm.modules.diffusionmodules.util import make_beta_schedule

SHAPE = (3, 4, 4)


class ToyEpsModel(nn.Module):
    """The sampler-facing interface of LatentDiffusion: `alphas_cumprod` (T,) and `apply_model(x, t, cond)`."""

    def __init__(self, timesteps: int = 1000):
        super().__init__()
        torch.manual_seed(0)
        betas = make_beta_schedule("linear", timesteps, 0.0015, 0.0195)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0).float())
        self.conv = nn.Conv2d(SHAPE[0], SHAPE[0], 3, padding=1)
        self.calls = 0

    def apply_model(self, x, t, cond):
        self.calls += 1
        return torch.tanh(self.conv(x)) + cond.mean((1, 2)).view(-1, 1, 1, 1) + (t.float() / 1000).view(-1, 1, 1, 1)


@pytest.fixture
def model():
    return ToyEpsModel()


def _cond(n=2, seed=1):
    return torch.randn(n, 5, 8, generator=torch.Generator().manual_seed(seed))


def _sample(sampler_cls, model, seed=0, **kw):
    kw.setdefault("conditioning", _cond())
    g = torch.Generator().manual_seed(seed)
    samples, _ = sampler_cls(model).sample(
        S=kw.pop("S", 5), batch_size=2, shape=SHAPE, verbose=False, generator=g, **kw
    )
    return samples


def test_uniform_discretisation():
    assert make_ddim_timesteps(7, 1000).tolist() == [1, 143, 285, 427, 569, 711, 853, 995]
    assert make_ddim_timesteps(10, 1000).tolist() == list(range(1, 1000, 100))
    with pytest.raises(ValueError, match="sampling steps"):
        make_ddim_timesteps(0, 1000)
    # where the +1 shift would step past the schedule, the last step is T - 1
    assert make_ddim_timesteps(3, 1000).tolist() == [1, 334, 667, 999]
    assert make_ddim_timesteps(1000, 1000).tolist() == list(range(1, 1000))


@pytest.mark.parametrize("sampler_cls", SAMPLERS.values(), ids=SAMPLERS)
def test_runs_on_cpu_and_visits_the_schedule(sampler_cls, model):
    sampler = sampler_cls(model)
    steps_seen = []
    samples, inter = sampler.sample(
        S=7,
        batch_size=2,
        shape=SHAPE,
        conditioning=_cond(),
        verbose=False,
        log_every_t=3,
        callback=lambda i, x, x0: steps_seen.append(i),
    )
    assert samples.shape == (2, *SHAPE) and torch.isfinite(samples).all()
    assert len(sampler.ddim_timesteps) == 8 and steps_seen == list(range(8))
    # start + schedule indices 7, 6, 3, 0 (every log_every_t-th and the first step)
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 5
    assert torch.equal(inter["x_inter"][-1], samples)
    # PLMS: one model call per step plus the second one of its Heun start; DDIM: one per step
    assert model.calls == 8 + (sampler_cls is PLMSSampler)


@pytest.mark.parametrize("sampler_cls", SAMPLERS.values(), ids=SAMPLERS)
def test_generator_makes_samples_reproducible(sampler_cls, model):
    kw = {"eta": 0.5} if sampler_cls is DDIMSampler else {}  # DDIM with η > 0 also draws per-step noise
    a, b, c = (_sample(sampler_cls, model, seed=s, **kw) for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddim_eta_noise_comes_from_the_generator(model):
    x_T = torch.randn(2, *SHAPE)
    a, b, c = (_sample(DDIMSampler, model, seed=s, x_T=x_T, eta=1.0) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # η = 0 is deterministic given x_T: the generator is not used
    assert torch.equal(_sample(DDIMSampler, model, seed=0, x_T=x_T), _sample(DDIMSampler, model, seed=1, x_T=x_T))


@pytest.mark.parametrize("sampler_cls", SAMPLERS.values(), ids=SAMPLERS)
def test_classifier_free_guidance(sampler_cls, model):
    x_T, cond, uncond = torch.randn(2, *SHAPE), _cond(seed=1), _cond(seed=2)
    plain = _sample(sampler_cls, model, x_T=x_T, conditioning=cond)
    scale_one = _sample(sampler_cls, model, x_T=x_T, conditioning=cond, unconditional_conditioning=uncond)
    assert torch.equal(plain, scale_one)
    # guidance combines the two passes: with uncond == cond any scale gives the unguided ε
    same = _sample(
        sampler_cls,
        model,
        x_T=x_T,
        conditioning=cond,
        unconditional_conditioning=cond,
        unconditional_guidance_scale=3.0,
    )
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-5)
    calls = model.calls
    guided = _sample(
        sampler_cls,
        model,
        x_T=x_T,
        conditioning=cond,
        unconditional_conditioning=uncond,
        unconditional_guidance_scale=3.0,
    )
    assert not torch.allclose(guided, plain)
    assert model.calls - calls == 5 + (sampler_cls is PLMSSampler)  # cond and uncond batched in one call
    with pytest.raises(ValueError, match="unconditional_conditioning"):
        _sample(sampler_cls, model, unconditional_guidance_scale=3.0)


@pytest.mark.parametrize("sampler_cls", SAMPLERS.values(), ids=SAMPLERS)
def test_bad_input(sampler_cls, model):
    with pytest.raises(ValueError, match="x_T has shape"):
        _sample(sampler_cls, model, x_T=torch.randn(3, *SHAPE))
    with pytest.raises(ValueError, match="conditioning has 3 items"):
        _sample(sampler_cls, model, conditioning=_cond(n=3))
    if sampler_cls is PLMSSampler:
        with pytest.raises(ValueError, match="eta must be 0"):
            _sample(sampler_cls, model, eta=0.5)
