"""The demo's presets: what one demo run does (the simulation size, the world models' sizes, each stage's flags),
the recipe's Stage B and the published one, and the one-change variants of `--levers`. The README's "The demo"
says why the recipe is what it is; `studies.py` adds the published optimisation for the curve and ablations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from demo.world_models import WorldSizes

MAE = {"embed_dim": 128, "depth": 4, "num_heads": 4, "decoder_embed_dim": 64, "decoder_num_heads": 4}


@dataclass(frozen=True)
class Preset:
    """Everything one demo run does: the simulation size, the world models' sizes and each stage's flags."""

    simulation: str
    img_size: int
    world: WorldSizes
    a1: dict = field(default_factory=dict)
    a2: dict = field(default_factory=dict)
    b: dict = field(default_factory=dict)
    gen_eval: dict = field(default_factory=dict)
    models: str | None = None  # the world models' folder under pretrains/demo (default: the simulation's name)
    target: str = "GOD"  # the target data of A2, Stage B and gen_eval: GOD (sbj_3) or NSD (subj01, MindEye2 files)


# Stage B's recipe (the README's "The demo" says why): one context token, a Linear of all the encoder's tokens
# started at the ridge regression onto the LDM's class embeddings of the training labels and kept there with the
# encoder; the UNet's conditioning path (the published set) and a null context trained with 10% condition dropout;
# sampling with classifier-free guidance 3; double conditioning's new Linear starts at zero (training starts from
# cross-attention only; docs/defects.md #16). Stage A's share is short: a linear read-out of the encoder's tokens
# holds what the fMRI holds after one epoch already.
RECIPE_B = dict(
    conditioner="linear_pool",
    ridge_init=True,
    freeze_encoder=True,
    freeze_mapper=True,
    cond_dropout=0.1,
    guidance_scale=3.0,
    latent_views=4,
    time_cond_start="zero",
)
DEMO = Preset(
    simulation="demo",
    img_size=32,
    world=WorldSizes(),
    a1=dict(num_epoch=2, warmup_epochs=1, lr=1e-3, batch_size=32, ckpt_every=2, **MAE),
    a2=dict(num_epoch=2, warmup_epochs=1, lr=5e-4, ckpt_every=2),
    b=dict(
        img_size=32,
        batch_size=25,
        lr=1e-4,
        num_epoch=12,
        val_every=4,
        num_val_items=10,
        num_samples=1,
        ddim_steps=50,
        **RECIPE_B,
    ),
    gen_eval=dict(num_samples=5, ddim_steps=50, batch_size=50, num_trials=1000),
)
# `--levers`: each one change of the recipe, Stage B retrained (or only sampled) and scored like the recipe. The
# published conditioning trains the encoder, the mappers and the UNet's conditioning path on 77 mapped tokens.
PUBLISHED_B = dict(
    conditioner="published",
    ridge_init=False,
    freeze_encoder=False,
    freeze_mapper=False,
    cond_dropout=0.0,
    guidance_scale=1.0,
    latent_views=0,
    time_cond_start="published",
)
# The published Stage B, unchanged: its conditioning (PUBLISHED_B) and its optimisation (Config_Generative_Model).
PUBLISHED_STAGE_B = {**PUBLISHED_B, "lr": 5.3e-5, "batch_size": 5, "clip_grad": 0.5, "crop_ratio": 0.2}
LEVERS = {  # name -> (Stage B flags changed, or None: the recipe's model; gen_eval flags changed)
    "published conditioning (77 tokens)": (PUBLISHED_B, {}),
    "published, global_pool (one mean token)": ({**PUBLISHED_B, "conditioner": "global_pool"}, {}),
    "linear pool trained from the ridge start": ({"freeze_mapper": False}, {}),
    "linear pool trained from a random start": ({"ridge_init": False, "freeze_mapper": False}, {}),
    "patch tokens (one context token per encoder token), ridge start": ({"conditioner": "patch_tokens"}, {}),
    "patch tokens trained from a random start": (
        {"conditioner": "patch_tokens", "ridge_init": False, "freeze_mapper": False},
        {},
    ),
    "encoder trained too": ({"freeze_encoder": False}, {}),
    "no condition dropout, no guidance": ({"cond_dropout": 0.0, "guidance_scale": 1.0}, {}),
    "guidance 1 at sampling (no guidance)": (None, {"guidance_scale": 1.0}),
    "guidance 2 at sampling": (None, {"guidance_scale": 2.0}),
    "guidance 5 at sampling": (None, {"guidance_scale": 5.0}),
    "time conditioning from PyTorch's default start (published)": ({"time_cond_start": "published"}, {}),
    "cross-attention only (no time conditioning)": ({"use_time_cond": False}, {}),
}
PRESETS = {
    "demo": DEMO,
    "hard": dataclasses.replace(DEMO, simulation="hard"),  # the same recipe on the harder brain (data/README.md)
    # the same recipe on the cortex-shaped brain at each degree of sharing (data/README.md; demo/pretraining.py),
    # with the demo's world models (the same images)
    **{
        name: dataclasses.replace(DEMO, simulation=name, models="demo")
        for name in ("cortex", "cortex-high", "cortex-none")
    },
    "tiny": Preset(
        simulation="tiny",
        img_size=32,
        world=WorldSizes(
            per_class=2,
            heldout_per_class=1,
            n_embed=16,
            vq_steps=2,
            vq_batch=4,
            unet_channels=32,
            context_dim=32,
            ldm_steps=2,
            ldm_batch=4,
            clf_width=8,
            clf_steps=2,
            clf_batch=4,
            eval_samples=1,
            eval_steps=5,
        ),
        a1=dict(num_epoch=1, warmup_epochs=0, lr=1e-3, batch_size=32, ckpt_every=1, **MAE),
        a2=dict(num_epoch=1, warmup_epochs=0, lr=5e-4, ckpt_every=1),
        b=dict(
            img_size=32,
            batch_size=8,
            lr=1e-4,
            num_epoch=1,
            val_every=1,
            num_val_items=10,
            num_samples=1,
            ddim_steps=5,
            **{**RECIPE_B, "latent_views": 1},
        ),
        gen_eval=dict(num_samples=1, ddim_steps=5, batch_size=50, num_trials=1000, limit=20),
    ),
}
# `nsd`: the recipe on the simulated NSD (MindEye2's layout; subj01, the shared images as the test set). NSD's scenes
# carry no class labels, so the read-out starts at random and trains (the lever "linear pool trained from a random
# start"); A1 adds NSD's training trials; Stage B trains on single trials, 3,600 pairs an epoch (GOD's 1,200), so
# 4 epochs make the demo's number of steps.
PRESETS["nsd"] = dataclasses.replace(
    DEMO,
    simulation="nsd",
    models="demo",
    target="NSD",
    a1={**DEMO.a1, "include_nsd": True, "nsd_subs": ["subj01", "subj02"]},
    b={**DEMO.b, "ridge_init": False, "freeze_mapper": False, "num_epoch": 4, "val_every": 2},
)
PRESETS["cortex-tiny"] = dataclasses.replace(PRESETS["tiny"], simulation="cortex-tiny", models="tiny")  # tests
