"""The simulated world's own "ImageNet" models, which the published ones stand for in the demo.

On fresh draws of every GOD category of the simulation (training and test categories, as ImageNet covers GOD's
test categories; `simulation.simulate.draw_class_images`), in plain PyTorch loops of a fixed number of steps:

  (a) a small VQ autoencoder (`VQModelInterface`);
  (b) a class-conditioned LDM on its latents, written in the published label2img layout (`config.yaml` +
      `model.ckpt`), so that Stage B loads it as it loads the real one;
  (c) the n-way classifier (`demo.classifier`) over the categories, which gen_eval uses in place of ViT-H/14.

`measure` then writes what they can do (`report.json`, `ldm_samples.png`): VQ reconstruction, the classifier's
accuracy on held-out draws and on the GOD stimuli, and whether LDM samples of the GOD test categories are
classified as their category (what the LDM renders of a category it is told, unguided).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import eval_metrics
from atomic import write_text_atomically
from checkpoint import load_checkpoint, save_checkpoint
from classifier_file import load_classifier_file
from dc_ldm.models.autoencoder import VQModelInterface
from dc_ldm.models.diffusion.ddpm import LatentDiffusion, load_ldm_checkpoint
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.modules.ema import LitEma
from dc_ldm.util import instantiate_from_config, load_ldm_config
from demo.classifier import save_classifier, train_classifier
from demo.simulation.simulate import draw_class_images
from engine import Schedule, fused_adam
from figures import image_grid
from intervals import bootstrap_interval
from readers.god import read_class_index, read_god_labels
from runtime import progress, seed_everything
from transforms import to_model_range, to_uint8_images

log = logging.getLogger("mindvis.demo")


@dataclass(frozen=True)
class WorldSizes:
    """Model sizes and training lengths (fixed steps: a result depends on the seed, not the machine)."""

    per_class: int = 24  # training draws per category
    heldout_per_class: int = 4  # evaluation draws per category (another seed)
    n_embed: int = 512  # VQ codebook
    vq_ch: int = 32
    vq_steps: int = 800
    vq_batch: int = 16
    vq_lr: float = 2e-3
    unet_channels: int = 64
    context_dim: int = 128
    ldm_steps: int = 520
    ldm_batch: int = 64
    ldm_lr: float = 1e-3
    ema_decay: float = 0.99
    p_uncond: float = 0.1  # labels replaced by the extra "unconditional" class, as in the ImageNet LDM
    clf_width: int = 32
    clf_steps: int = 320
    clf_batch: int = 64
    clf_lr: float = 2e-3
    eval_samples: int = 1  # LDM samples per GOD test category
    eval_steps: int = 50  # PLMS steps


# ---- configuration in the published label2img layout --------------------------------------------------------


def ldm_config(sizes: WorldSizes, img_size: int, n_classes: int) -> dict:
    """The published label2img config.yaml structure (same targets and keys) with the demo's small sizes."""
    latent = img_size // 4  # VQ with ch_mult [1, 1, 2]: two halvings
    return {
        "model": {
            "base_learning_rate": sizes.ldm_lr,
            "target": "dc_ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015,
                "linear_end": 0.0195,
                "num_timesteps_cond": 1,
                "log_every_t": 200,
                "timesteps": 1000,
                "first_stage_key": "image",
                "cond_stage_key": "fmri",
                "image_size": latent,
                "channels": 3,
                "cond_stage_trainable": True,
                "conditioning_key": "crossattn",
                "monitor": "val/loss",
                "use_ema": False,
                "unet_config": {
                    "target": "dc_ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": latent,
                        "in_channels": 3,
                        "out_channels": 3,
                        "model_channels": sizes.unet_channels,
                        "attention_resolutions": [2, 4],
                        "num_res_blocks": 1,
                        "channel_mult": [1, 2, 2],
                        "num_heads": 1,
                        "use_spatial_transformer": True,
                        "transformer_depth": 1,
                        "context_dim": sizes.context_dim,
                        "cond_scale": 1.0,
                        "use_time_cond": True,
                        "global_pool": False,
                    },
                },
                "first_stage_config": {
                    "target": "dc_ldm.models.autoencoder.VQModelInterface",
                    "params": {
                        "embed_dim": 3,
                        "n_embed": sizes.n_embed,
                        "ddconfig": {
                            "double_z": False,
                            "z_channels": 3,
                            "resolution": img_size,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": sizes.vq_ch,
                            "ch_mult": [1, 1, 2],
                            "num_res_blocks": 1,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
                "cond_stage_config": {
                    "target": "dc_ldm.modules.encoders.modules.ClassEmbedder",
                    "params": {"n_classes": n_classes + 1, "embed_dim": sizes.context_dim, "key": "class_label"},
                },
            },
        }
    }


def build_ldm(config: dict, use_time_cond: bool) -> LatentDiffusion:
    """LatentDiffusion from `config`; the class-conditioned training runs without `time_embed_condtion`.

    Double conditioning maps a 77-token context into the timestep embedding; a class label is one token,
    so, as with the published ImageNet model, that path is left for Stage B to train.
    """
    model_cfg = copy.deepcopy(config["model"])
    model_cfg["params"]["unet_config"]["params"]["use_time_cond"] = use_time_cond
    return instantiate_from_config(model_cfg)


def write_label2img(ldm: LatentDiffusion, config: dict, folder: Path, steps: int, seed: int) -> None:
    """config.yaml + model.ckpt ({state_dict, ...} as Lightning writes it) with every key the config builds.

    The published label2img file holds every key its config builds, `time_embed_condtion` included (the reference
    key set, docs/formats.md), which class-conditioned training never uses; here it holds what a model built from
    the config and never trained holds: PyTorch's default initialisation (drawn from `seed`). Stage B's 77-token
    conditioning then loads it as the original loads the published file, so double conditioning starts as a
    random function of the fMRI (docs/defects.md #16).
    """
    full = build_ldm(config, use_time_cond=True)
    result = full.load_state_dict(ldm.state_dict(), strict=False)
    untrained = [k for k in result.missing_keys if "time_embed_condtion" not in k]
    if untrained or result.unexpected_keys:
        raise RuntimeError(f"label2img export: missing {untrained}, unexpected {result.unexpected_keys}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in full.model.diffusion_model.time_embed_condtion:
            layer.reset_parameters()  # PyTorch's default initialisation, as the module is built
    folder.mkdir(parents=True, exist_ok=True)
    header = "# The demo's label-conditioned LDM, trained by code/demo/world_models.py on the simulated world;\n"
    header += "# the structure of the published pretrains/ldm/label2img/config.yaml with small sizes.\n"
    write_text_atomically(folder / "config.yaml", header + OmegaConf.to_yaml(OmegaConf.create(config)))
    state = {k: v.detach().cpu() for k, v in full.state_dict().items()}
    ckpt = {"state_dict": state, "epoch": 0, "global_step": steps}
    save_checkpoint(ckpt, folder / "model.ckpt")


# ---- training ------------------------------------------------------------------------------------------------


# The world models train channels-last (weights and inputs) with fused Adam, faster on a CPU than the default
# layout (the README's "Time" has the step times); bf16 autocast was slower for these small models.


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, clip: float | None = None) -> None:
    """Set the learning rate, back-propagate `loss` (clipping the gradient norm at `clip`) and update."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()


def train_vq(config: dict, images: torch.Tensor, sizes: WorldSizes, device: torch.device) -> VQModelInterface:
    """L1 + codebook loss, codebook initialised from encoder outputs and dead codes restarted from the batch."""
    vq = instantiate_from_config(config["model"]["params"]["first_stage_config"])
    vq = vq.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(vq.parameters(), lr=sizes.vq_lr, betas=(0.5, 0.9), fused=fused_adam(device))
    usage = torch.zeros(sizes.n_embed, device=device)
    codebook = vq.quantize.embedding.weight
    schedule = Schedule(sizes.vq_lr, 0.1 * sizes.vq_lr, warmup_epochs=20, num_epoch=sizes.vq_steps)  # in steps
    for step in progress(range(sizes.vq_steps), sizes.vq_steps, "vq autoencoder"):
        x = to_model_range(images[torch.randint(len(images), (sizes.vq_batch,))].to(device))  # (B, 3, S, S)
        x = x.contiguous(memory_format=torch.channels_last)
        h = vq.encode(x)  # (B, 3, s, s) before quantisation
        flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (B*s*s, 3)
        # a random-init codebook of 1/n_embed-sized vectors leaves most codes unused; seed it from the data
        if step == 0 or step % 25 == 0:
            dead = torch.ones_like(usage, dtype=torch.bool) if step == 0 else usage == 0
            if dead.any():
                pick = torch.randint(len(flat), (int(dead.sum()),), device=device)
                with torch.no_grad():
                    codebook[dead] = flat[pick] + 0.01 * flat.std() * torch.randn_like(flat[pick])
            usage.zero_()
        quant, codebook_loss, (_, _, indices) = vq.quantize(h)
        usage += torch.bincount(indices, minlength=sizes.n_embed)
        rec_loss = (vq.decode(quant, force_not_quantize=True) - x).abs().mean()
        loss = rec_loss + codebook_loss
        _optimizer_step(opt, loss, schedule(step + 1))
        if step % 200 == 0:
            log.info("[vq] step %d  L1 %.4f  codebook %.4f", step, rec_loss.item(), codebook_loss.item())
    return normalise_latents(vq.eval(), images[:512].to(device))


@torch.no_grad()
def normalise_latents(vq: VQModelInterface, images: torch.Tensor) -> VQModelInterface:
    """Re-parametrise so the latents the LDM diffuses have zero mean and unit std; decoding is unchanged.

    Shifting by a per-channel mean and dividing by one scalar keeps every nearest-codebook choice, and
    post_quant_conv absorbs the inverse map. The published config has no scale_factor; this makes 1.0 right.
    """
    h = torch.cat([vq.encode(to_model_range(b)) for b in images.split(64)])  # (N, 3, s, s)
    mean, std = h.mean(dim=(0, 2, 3)), h.std()
    vq.quant_conv.bias.sub_(mean).div_(std)
    vq.quant_conv.weight.div_(std)
    vq.quantize.embedding.weight.sub_(mean).div_(std)
    post = vq.post_quant_conv
    post.bias.add_(post.weight[:, :, 0, 0] @ mean)
    post.weight.mul_(std)
    return vq


def class_names(data_dir: Path) -> list[str]:
    """The name of every GOD class of a simulated data set, in class-index order."""
    entries = read_class_index(data_dir / "Kamitani" / "npz")
    return [entries[c][-1] for c in sorted(entries)]


@torch.no_grad()
def init_from_names(embedding: torch.nn.Embedding, names: list[str]) -> None:
    """Start each class's row as the sum of random word vectors of its name ('red striped star on sky horizon').

    A table of independent random rows (nn.Embedding's default) gives related classes unrelated embeddings, and
    a few minutes of training leave it so; the model then renders classes it was not trained on in Stage B from
    blends that mean nothing to it. Embedding a class by the words of its name, as text-conditioned generators do,
    puts classes that share words near each other, the structure an ImageNet model learns from its data. Each
    row keeps unit variance per coordinate; rows past `names` (the unconditional class) stay as they are. The word
    vectors come from torch's global generator (seeded by `main`).
    """
    vocabulary = sorted({w for name in names for w in name.split()})
    words = torch.randn(len(vocabulary), embedding.embedding_dim, device=embedding.weight.device)
    index = {w: i for i, w in enumerate(vocabulary)}
    for c, name in enumerate(names):
        tokens = name.split()
        embedding.weight[c] = words[[index[w] for w in tokens]].sum(0) / len(tokens) ** 0.5


def train_ldm(
    config: dict,
    vq: VQModelInterface,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    sizes: WorldSizes,
    device: torch.device,
) -> LatentDiffusion:
    """ε-prediction on the VQ latents of all images, labels dropped to the unconditional class at p_uncond."""
    ldm = build_ldm(config, use_time_cond=False).to(device, memory_format=torch.channels_last)
    init_from_names(ldm.cond_stage_model.embedding, names)
    ldm.first_stage_model.load_state_dict(vq.state_dict())
    with torch.no_grad():
        z = torch.cat([ldm.encode_first_stage(to_model_range(b.to(device))) for b in images.split(64)])  # (N,3,s,s)
        z = z.contiguous(memory_format=torch.channels_last)
    log.info("[ldm] %d latents %s, std %.3f", len(z), tuple(z.shape[1:]), z.std().item())
    uncond = config["model"]["params"]["cond_stage_config"]["params"]["n_classes"] - 1
    params = [p for p in ldm.parameters() if p.requires_grad]  # UNet + class embedding
    opt = torch.optim.AdamW(params, lr=sizes.ldm_lr, weight_decay=0.0, fused=fused_adam(device))
    ema = LitEma(ldm, decay=sizes.ema_decay)
    labels = labels.to(device)
    schedule = Schedule(sizes.ldm_lr, 0.1 * sizes.ldm_lr, warmup_epochs=20, num_epoch=sizes.ldm_steps)  # in steps
    for step in progress(range(sizes.ldm_steps), sizes.ldm_steps, "label-conditioned LDM"):
        idx = torch.randint(len(z), (sizes.ldm_batch,), device=device)
        c = torch.where(torch.rand(len(idx), device=device) < sizes.p_uncond, uncond, labels[idx])
        loss = ldm(z[idx], c)
        _optimizer_step(opt, loss, schedule(step + 1), clip=1.0)
        ema(ldm)
        if step % 100 == 0:
            log.info("[ldm] step %d  loss %.4f", step, loss.item())
    ema.copy_to(ldm)
    return ldm.eval()


# ---- measurements --------------------------------------------------------------------------------------------


@torch.no_grad()
def _predict(clf, preprocess, images: torch.Tensor, device) -> torch.Tensor:
    """Classifier argmax for uint8 (N, 3, H, W) -> (N,) on the CPU."""
    return torch.cat([clf(preprocess(b.to(device))).argmax(-1).cpu() for b in images.split(128)])


@torch.no_grad()
def _vq_roundtrip(ldm: LatentDiffusion, images: torch.Tensor, device) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> uint8 reconstructions through the LDM's first stage (quantised)."""
    out = [ldm.decode_first_stage(ldm.encode_first_stage(to_model_range(b.to(device)))) for b in images.split(64)]
    return torch.from_numpy(to_uint8_images(torch.cat(out))).permute(0, 3, 1, 2)


@torch.no_grad()
def sample_classes(ldm: LatentDiffusion, labels: torch.Tensor, steps: int, seed: int, device) -> torch.Tensor:
    """PLMS samples of the given classes (N,) -> uint8 (N, 3, S, S)."""
    cond = ldm.get_learned_conditioning(labels.to(device))  # (N, 1, context_dim)
    generator = torch.Generator().manual_seed(seed)
    z, _ = PLMSSampler(ldm).sample(
        S=steps, batch_size=len(labels), shape=ldm.latent_shape, conditioning=cond, generator=generator, verbose=False
    )
    return torch.from_numpy(to_uint8_images(ldm.decode_first_stage(z))).permute(0, 3, 1, 2)


def _god_stimuli(data_dir: Path, img_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GOD training and test stimuli resized like the model input (uint8 (N, 3, S, S)) with their class index."""
    folder = data_dir / "Kamitani" / "npz"
    labels = read_god_labels(folder)
    out = {}
    with np.load(folder / "images_256.npz") as npz:
        for split in ("train", "test"):
            x = torch.from_numpy(npz[f"{split}_images"]).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True)
            out[split] = (x.round().clamp(0, 255).byte(), torch.from_numpy(labels[split][0]))
    return out


def draw_images(data_dir: Path, per_class: int, img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The world's "ImageNet": fresh draws of every category, uint8 (N, 3, S, S), and their labels (N,)."""
    images, labels = draw_class_images(data_dir, per_class, seed=seed, image_size=img_size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


# ---- the steps the pipeline runs (each seeds itself, so a cached step and a fresh one give the same result) ----


def make_vq(data_dir: Path, path: Path, sizes: WorldSizes, img_size: int, seed: int, device) -> dict:
    """Train the VQ autoencoder and save it (its weights and its config section) at `path`."""
    seed_everything(seed)
    images, labels = draw_images(data_dir, sizes.per_class, img_size, seed)
    config = ldm_config(sizes, img_size, int(labels.max()) + 1)
    vq = train_vq(config, images, sizes, device)
    save_checkpoint(
        {
            "state_dict": {k: v.cpu() for k, v in vq.state_dict().items()},
            "config": config["model"]["params"]["first_stage_config"],
        },
        path,
    )
    return {"steps": sizes.vq_steps, "images": len(images)}


def make_ldm(data_dir: Path, vq_path: Path, folder: Path, sizes: WorldSizes, img_size: int, seed: int, device) -> dict:
    """Train the class-conditioned LDM on the VQ's latents and write it in the label2img layout into `folder`."""
    seed_everything(seed + 1)
    images, labels = draw_images(data_dir, sizes.per_class, img_size, seed)
    config = ldm_config(sizes, img_size, int(labels.max()) + 1)
    vq_ckpt = load_checkpoint(vq_path)
    vq = instantiate_from_config(vq_ckpt["config"])
    vq.load_state_dict(vq_ckpt["state_dict"])
    ldm = train_ldm(config, vq.to(device), images, labels, class_names(data_dir), sizes, device)
    write_label2img(ldm, config, folder, sizes.ldm_steps, seed)
    return {"steps": sizes.ldm_steps}


def make_classifier(
    data_dir: Path, ldm_folder: Path, path: Path, sizes: WorldSizes, img_size: int, seed: int, device
) -> dict:
    """Train the n-way classifier on clean draws and their VQ round trips; save it as a classifier file."""
    seed_everything(seed + 2)
    images, labels = draw_images(data_dir, sizes.per_class, img_size, seed)
    first_stage = load_world_ldm(ldm_folder).to(device)
    degraded = _vq_roundtrip(first_stage, images, device)
    names = class_names(data_dir)
    model = train_classifier(
        images, degraded, labels, len(names), sizes.clf_steps, sizes.clf_batch, sizes.clf_lr, sizes.clf_width, device
    )
    save_classifier(model, sizes.clf_width, img_size, names, path)
    return {"steps": sizes.clf_steps}


def load_world_ldm(folder: Path) -> LatentDiffusion:
    """The world's label-conditioned LDM as trained (without the untrained `time_embed_condtion`), in eval mode."""
    ldm = build_ldm({"model": load_ldm_config(folder / "config.yaml")}, use_time_cond=False)
    load_ldm_checkpoint(
        ldm,
        folder / "model.ckpt",
        ignore_cond_stage=False,
        ignore_keys=("model.diffusion_model.time_embed_condtion.",),
    )
    return ldm.eval()


def measure(
    data_dir: Path, ldm_folder: Path, clf_path: Path, out: Path, sizes: WorldSizes, img_size: int, seed: int, device
) -> dict:
    """VQ reconstruction, classifier accuracy per split, and the classification of LDM samples of test classes."""
    seed_everything(seed + 3)
    ldm = load_world_ldm(ldm_folder).to(device)
    clf, preprocess = load_classifier_file(clf_path, device)
    n_classes = clf.num_classes
    images, labels = draw_images(data_dir, sizes.heldout_per_class, img_size, seed + 1)  # held-out draws
    god = _god_stimuli(data_dir, img_size)
    is_test = torch.isin(labels, god["test"][1])
    report: dict = {"chance": {"top1_all_classes": 1 / n_classes, "n_way": 1 / min(50, n_classes)}}

    recon = _vq_roundtrip(ldm, images, device)
    mse = (recon.float() - images.float()).square().mean(dim=(1, 2, 3))
    report["vq"] = {
        "psnr_db": (10 * torch.log10(255**2 / mse.clamp_min(1e-3))).mean().item(),
        "mean_abs_error": (recon.float() - images.float()).abs().mean().item(),
    }
    accuracy, intervals = {}, {}
    for name, (x, y) in {
        "heldout_train_classes": (images[~is_test], labels[~is_test]),
        "heldout_test_classes": (images[is_test], labels[is_test]),
        "heldout_test_classes_vq_reconstructed": (recon[is_test], labels[is_test]),
        "god_train_stimuli": god["train"],
        "god_test_stimuli": god["test"],
    }.items():
        correct = (_predict(clf, preprocess, x, device) == y).double().cpu()
        accuracy[name], intervals[name] = correct.mean().item(), bootstrap_interval(correct.numpy())
    report["classifier_accuracy"] = accuracy
    report["classifier_accuracy_intervals"] = intervals  # 95% over the images

    gt, gt_labels = god["test"]
    labels_rep = gt_labels.repeat(sizes.eval_samples)  # (S * N,), set-major
    samples = sample_classes(ldm, labels_rep, sizes.eval_steps, seed, device)  # (S * N, 3, S, S)
    top1 = (_predict(clf, preprocess, samples, device) == labels_rep).float().mean().item()
    hwc = samples.view(sizes.eval_samples, len(gt), *samples.shape[1:]).permute(0, 1, 3, 4, 2)
    n_way_result = eval_metrics.evaluate(
        gt.permute(0, 2, 3, 1),
        hwc,
        metrics=["n_way"],
        classifier=(clf, preprocess),
        n_way=min(50, n_classes),
        device=device,
    )
    n_way = n_way_result["scores"]
    report["ldm_samples_of_test_classes"] = {
        "plms_steps": sizes.eval_steps,
        "samples_per_class": sizes.eval_samples,
        "top1_all_classes": top1,
        "n_way_top1 (gt class = classifier on the GOD stimulus)": n_way.get("top-1-class"),
        "n_way_top1_interval": n_way_result["intervals"].get("top-1-class"),  # 95% over the test categories
    }
    image_grid(gt.permute(0, 2, 3, 1).numpy(), hwc.numpy(), out / "ldm_samples.png", max_rows=10)
    write_text_atomically(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report
