"""The samplers by name: what `--sampler` takes (gen_eval) and `sample_images` runs.

A sampler is a `sampling_util.DiffusionSampler` whose `step` turns x_{τ_i} into x_{τ_{i-1}}; adding one is its
module beside these and an entry here.
"""

from __future__ import annotations

from dc_ldm.models.diffusion.ddim import DDIMSampler
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.models.diffusion.sampling_util import DiffusionSampler

SAMPLERS: dict[str, type[DiffusionSampler]] = {"plms": PLMSSampler, "ddim": DDIMSampler}  # plms: published
