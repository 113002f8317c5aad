"""Train the simulated world's own "ImageNet" models, which the published ones stand for in the demo.

    python code/train_demo_models.py --data_dir data/synthetic/demo --out pretrains/demo/demo
    python code/train_demo_models.py --data_dir data/synthetic/tiny --out /tmp/demo_models --preset tiny

On fresh draws of every GOD category of the simulation (training and test categories, as ImageNet covers
GOD's test categories; `make_synthetic_data.draw_class_images`) it trains, in plain PyTorch loops:

  (a) a small VQ autoencoder (`VQModelInterface`), cached as `<out>/vq.pth`;
  (b) a class-conditioned LDM on its latents, written in the published label2img layout,
      `<out>/label2img/config.yaml` + `model.ckpt`, so that Stage B loads it as it loads the real one;
  (c) a small image classifier over the categories, `<out>/classifier.pth` (`demo_classifier.load_classifier`),
      which `eval_metrics` uses for the n-way metric in place of ViT-H/14.

Then it measures them (`<out>/report.json`, `<out>/ldm_samples.png`): VQ reconstruction, the classifier's
accuracy on held-out draws and on the GOD stimuli, and whether LDM samples of the GOD test categories
are classified as their category. A model whose file exists is reused unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur
from tqdm import tqdm

import eval_metrics
from checkpoint import load_checkpoint, save_checkpoint
from dataset import read_class_index, read_god_labels
from dc_ldm.models.autoencoder import VQModelInterface
from dc_ldm.models.diffusion.ddpm import LatentDiffusion, load_ldm_checkpoint
from dc_ldm.models.diffusion.plms import PLMSSampler
from dc_ldm.modules.ema import LitEma
from dc_ldm.util import instantiate_from_config
from demo_classifier import DemoClassifier, load_classifier, save_classifier, to_model_input
from make_synthetic_data import draw_class_images
from runtime import is_interactive, pick_device, seed_everything

log = logging.getLogger("mindvis.demo_models")


@dataclass(frozen=True)
class DemoSizes:
    """Model sizes and training lengths.

    The `demo` steps take about 4 minutes on 2 CPU cores. `--minutes` is a guard, not the schedule: a part that
    runs past its share stops early with a warning, and its result then depends on the machine's speed.
    """

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


PRESETS = {
    "demo": DemoSizes(),
    "tiny": DemoSizes(
        per_class=2, heldout_per_class=1, n_embed=16, vq_steps=2, vq_batch=4, unet_channels=32, context_dim=32,
        ldm_steps=2, ldm_batch=4, clf_width=8, clf_steps=2, clf_batch=4, eval_samples=1, eval_steps=5,
    ),
}  # fmt: skip
TIME_SHARE = {"vq": 0.3, "ldm": 0.55, "classifier": 0.15}  # of --minutes


# ---- configuration in the published label2img layout --------------------------------------------------------


def ldm_config(sizes: DemoSizes, img_size: int, n_classes: int) -> dict:
    """The published label2img config.yaml structure (same targets and keys) with the demo's small sizes."""
    latent = img_size // 4  # VQ with ch_mult [1, 1, 2]: two halvings
    return {
        "model": {
            "base_learning_rate": sizes.ldm_lr,
            "target": "dc_ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "linear_start": 0.0015, "linear_end": 0.0195, "num_timesteps_cond": 1, "log_every_t": 200,
                "timesteps": 1000, "first_stage_key": "image", "cond_stage_key": "fmri", "image_size": latent,
                "channels": 3, "cond_stage_trainable": True, "conditioning_key": "crossattn",
                "monitor": "val/loss", "use_ema": False,
                "unet_config": {
                    "target": "dc_ldm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "image_size": latent, "in_channels": 3, "out_channels": 3,
                        "model_channels": sizes.unet_channels, "attention_resolutions": [2, 4], "num_res_blocks": 1,
                        "channel_mult": [1, 2, 2], "num_heads": 1, "use_spatial_transformer": True,
                        "transformer_depth": 1, "context_dim": sizes.context_dim, "cond_scale": 1.0,
                        "use_time_cond": True, "global_pool": False,
                    },
                },
                "first_stage_config": {
                    "target": "dc_ldm.models.autoencoder.VQModelInterface",
                    "params": {
                        "embed_dim": 3, "n_embed": sizes.n_embed,
                        "ddconfig": {
                            "double_z": False, "z_channels": 3, "resolution": img_size, "in_channels": 3,
                            "out_ch": 3, "ch": sizes.vq_ch, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
                            "attn_resolutions": [], "dropout": 0.0,
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
    }  # fmt: skip


def build_ldm(config: dict, use_time_cond: bool) -> LatentDiffusion:
    """LatentDiffusion from `config`; the class-conditioned training runs without `time_embed_condtion`.

    Double conditioning maps a 77-token context into the timestep embedding; a class label is one token,
    so, as with the published ImageNet model, that path is left for Stage B to train.
    """
    model_cfg = copy.deepcopy(config["model"])
    model_cfg["params"]["unet_config"]["params"]["use_time_cond"] = use_time_cond
    return instantiate_from_config(model_cfg)


def write_label2img(ldm: LatentDiffusion, config: dict, folder: Path, steps: int) -> None:
    """config.yaml + model.ckpt ({state_dict, ...} as Lightning writes it) with every key the config builds.

    `time_embed_condtion` (not trained here) is saved with its output layer zeroed, so that in Stage B the
    double conditioning starts from the pretrained timestep embedding and grows from there.
    """
    full = build_ldm(config, use_time_cond=True)
    result = full.load_state_dict(ldm.state_dict(), strict=False)
    untrained = [k for k in result.missing_keys if "time_embed_condtion" not in k]
    if untrained or result.unexpected_keys:
        raise RuntimeError(f"label2img export: missing {untrained}, unexpected {result.unexpected_keys}")
    with torch.no_grad():
        full.model.diffusion_model.time_embed_condtion[-1].weight.zero_()
        full.model.diffusion_model.time_embed_condtion[-1].bias.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    header = "# The demo's label-conditioned LDM, trained by code/train_demo_models.py on the simulated world;\n"
    header += "# the structure of the published pretrains/ldm/label2img/config.yaml with small sizes.\n"
    (folder / "config.yaml").write_text(header + OmegaConf.to_yaml(OmegaConf.create(config)))
    state = {k: v.detach().cpu() for k, v in full.state_dict().items()}
    ckpt = {"state_dict": state, "epoch": 0, "global_step": steps, "pytorch-lightning_version": pl.__version__}
    save_checkpoint(ckpt, folder / "model.ckpt")


# ---- training ------------------------------------------------------------------------------------------------


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then half-cosine to 10% of `base`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _loop(name: str, steps: int, deadline: float):
    """Step indices with a progress bar; stops early (with a log line) when the time budget is spent."""
    bar = tqdm(range(steps), desc=name, disable=not is_interactive())
    for step in bar:
        if time.time() > deadline:
            log.warning("[%s] time budget spent after %d of %d steps", name, step, steps)
            return
        yield step, bar


def _optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, clip: float | None = None) -> None:
    """Set the learning rate, back-propagate `loss` (clipping the gradient norm at `clip`) and update."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def train_vq(config: dict, images: torch.Tensor, sizes: DemoSizes, deadline: float, device) -> VQModelInterface:
    """L1 + codebook loss, codebook initialised from encoder outputs and dead codes restarted from the batch."""
    vq = instantiate_from_config(config["model"]["params"]["first_stage_config"]).to(device).train()
    opt = torch.optim.Adam(vq.parameters(), lr=sizes.vq_lr, betas=(0.5, 0.9))
    usage = torch.zeros(sizes.n_embed, device=device)
    codebook = vq.quantize.embedding.weight
    for step, bar in _loop("vq", sizes.vq_steps, deadline):
        x = _as_input(images[torch.randint(len(images), (sizes.vq_batch,))].to(device))  # (B, 3, S, S)
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
        _optimizer_step(opt, loss, _cosine_lr(step, sizes.vq_steps, sizes.vq_lr, warmup=20))
        bar.set_postfix(rec=f"{rec_loss.item():.4f}")
        if step % 100 == 0:
            log.info("[vq] step %d  L1 %.4f  codebook %.4f", step, rec_loss.item(), codebook_loss.item())
    return normalise_latents(vq.eval(), images[:512].to(device))


@torch.no_grad()
def normalise_latents(vq: VQModelInterface, images: torch.Tensor) -> VQModelInterface:
    """Re-parametrise so the latents the LDM diffuses have zero mean and unit std; decoding is unchanged.

    Shifting by a per-channel mean and dividing by one scalar keeps every nearest-codebook choice, and
    post_quant_conv absorbs the inverse map. The published config has no scale_factor; this makes 1.0 right.
    """
    h = torch.cat([vq.encode(_as_input(b)) for b in images.split(64)])  # (N, 3, s, s)
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
    sizes: DemoSizes,
    deadline: float,
    device,
) -> tuple[LatentDiffusion, int]:
    """ε-prediction on the VQ latents of all images, labels dropped to the unconditional class at p_uncond."""
    ldm = build_ldm(config, use_time_cond=False).to(device)
    init_from_names(ldm.cond_stage_model.embedding, names)
    ldm.first_stage_model.load_state_dict(vq.state_dict())
    with torch.no_grad():
        z = torch.cat([ldm.encode_first_stage(_as_input(b.to(device))) for b in images.split(64)])  # (N, 3, s, s)
    log.info("[ldm] %d latents %s, std %.3f", len(z), tuple(z.shape[1:]), z.std().item())
    uncond = config["model"]["params"]["cond_stage_config"]["params"]["n_classes"] - 1
    params = [p for p in ldm.parameters() if p.requires_grad]  # UNet + class embedding
    opt = torch.optim.AdamW(params, lr=sizes.ldm_lr, weight_decay=0.0)
    ema = LitEma(ldm, decay=sizes.ema_decay)
    labels = labels.to(device)
    done = 0
    for step, bar in _loop("ldm", sizes.ldm_steps, deadline):
        idx = torch.randint(len(z), (sizes.ldm_batch,), device=device)
        c = torch.where(torch.rand(len(idx), device=device) < sizes.p_uncond, uncond, labels[idx])
        loss = ldm(z[idx], c)
        _optimizer_step(opt, loss, _cosine_lr(step, sizes.ldm_steps, sizes.ldm_lr, warmup=20), clip=1.0)
        ema(ldm)
        done = step + 1
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            log.info("[ldm] step %d  loss %.4f", step, loss.item())
    ema.copy_to(ldm)
    return ldm.eval(), done


def train_classifier(
    images: torch.Tensor,
    degraded: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    img_size: int,
    sizes: DemoSizes,
    deadline: float,
    device,
) -> DemoClassifier:
    """Cross-entropy on clean and degraded pictures: shifts and pixel noise on all, Gaussian blur on half of
    each batch, and a third of the images replaced by `degraded` (the same images after a VQ round trip).

    ViT-H/14, which this classifier stands in for, recognises an object in a blurry, noisy or slightly
    off-colour picture; a small CNN trained on clean renders alone does not (it puts VQ round trips of the
    stimuli at chance), so it would judge every decoded image by its compression artefacts, not its content.
    """
    clf = DemoClassifier(n_classes, sizes.clf_width, img_size).to(device).train()
    opt = torch.optim.AdamW(clf.parameters(), lr=sizes.clf_lr, weight_decay=1e-4)
    pad = img_size // 16
    for step, bar in _loop("classifier", sizes.clf_steps, deadline):
        idx = torch.randint(len(images), (sizes.clf_batch,))
        swap = torch.rand(len(idx)) < 1 / 3
        picked = torch.where(swap[:, None, None, None], degraded[idx], images[idx])  # uint8 (B, 3, S, S)
        x = to_model_input(picked.to(device), img_size)  # (B, 3, S, S)
        dx, dy = torch.randint(-pad, pad + 1, (2,)).tolist()
        x = torch.roll(F.pad(x, (pad,) * 4, mode="replicate"), (dy, dx), dims=(2, 3))[..., pad:-pad, pad:-pad]
        half = len(x) // 2
        sigma = float(torch.empty(()).uniform_(0.3, 1.5)) * img_size / 32
        x[:half] = gaussian_blur(x[:half], kernel_size=2 * math.ceil(2 * sigma) + 1, sigma=sigma)
        x = x + 0.1 * torch.rand(len(x), 1, 1, 1, device=device) * torch.randn_like(x)
        loss = F.cross_entropy(clf(x), labels[idx].to(device))
        _optimizer_step(opt, loss, _cosine_lr(step, sizes.clf_steps, sizes.clf_lr, warmup=10))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 100 == 0:
            log.info("[classifier] step %d  loss %.3f", step, loss.item())
    return clf.eval()


# ---- measurements --------------------------------------------------------------------------------------------


@torch.no_grad()
def _predict(clf, preprocess, images: torch.Tensor, device) -> torch.Tensor:
    """Classifier argmax for uint8 (N, 3, H, W) -> (N,) on the CPU."""
    return torch.cat([clf(preprocess(b.to(device))).argmax(-1).cpu() for b in images.split(128)])


@torch.no_grad()
def _vq_roundtrip(ldm: LatentDiffusion, images: torch.Tensor, device) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> uint8 reconstructions through the LDM's first stage (quantised)."""
    out = [ldm.decode_first_stage(ldm.encode_first_stage(_as_input(b.to(device)))) for b in images.split(64)]
    return ((torch.cat(out).cpu() + 1) * 127.5).round().clamp(0, 255).byte()


@torch.no_grad()
def sample_classes(ldm: LatentDiffusion, labels: torch.Tensor, steps: int, seed: int, device) -> torch.Tensor:
    """PLMS samples of the given classes (N,) -> uint8 (N, 3, S, S)."""
    cond = ldm.get_learned_conditioning(labels.to(device))  # (N, 1, context_dim)
    generator = torch.Generator().manual_seed(seed)
    z, _ = PLMSSampler(ldm).sample(
        S=steps, batch_size=len(labels), shape=ldm.latent_shape, conditioning=cond, generator=generator, verbose=False
    )
    return ((ldm.decode_first_stage(z).cpu() + 1) * 127.5).round().clamp(0, 255).byte()


def _god_stimuli(data_dir: Path, img_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """GOD training and test stimuli resized like the model input (uint8 (N, 3, S, S)) with their class index."""
    folder = data_dir / "Kamitani" / "npz"
    labels = read_god_labels(folder)
    out = {}
    with np.load(folder / "images_256.npz") as npz:
        for split in ("train", "test"):
            x = torch.from_numpy(npz[f"{split}_images"]).permute(0, 3, 1, 2)
            x = torch.cat([to_model_input(b, img_size) for b in x.split(64)])
            out[split] = (((x + 1) * 127.5).round().clamp(0, 255).byte(), torch.from_numpy(labels[split][0]))
    return out


def measure(ldm, clf_path: Path, held: tuple, god: dict, sizes: DemoSizes, seed: int, device, out: Path) -> dict:
    """VQ reconstruction, classifier accuracy per split, and the classification of LDM samples of test classes."""
    clf, preprocess = load_classifier(clf_path, device)
    n_classes = clf.num_classes
    images, labels = held
    is_test = torch.isin(labels, god["test"][1])
    report: dict = {"chance": {"top1_all_classes": 1 / n_classes, "n_way": 1 / min(50, n_classes)}}

    recon = _vq_roundtrip(ldm, images, device)
    mse = (recon.float() - images.float()).square().mean(dim=(1, 2, 3))
    report["vq"] = {
        "psnr_db": (10 * torch.log10(255**2 / mse.clamp_min(1e-3))).mean().item(),
        "mean_abs_error": (recon.float() - images.float()).abs().mean().item(),
    }
    accuracy = {}
    for name, (x, y) in {
        "heldout_train_classes": (images[~is_test], labels[~is_test]),
        "heldout_test_classes": (images[is_test], labels[is_test]),
        "heldout_test_classes_vq_reconstructed": (recon[is_test], labels[is_test]),
        "god_train_stimuli": god["train"],
        "god_test_stimuli": god["test"],
    }.items():
        accuracy[name] = (_predict(clf, preprocess, x, device) == y).float().mean().item()
    report["classifier_accuracy"] = accuracy

    gt, gt_labels = god["test"]
    labels_rep = gt_labels.repeat(sizes.eval_samples)  # (S * N,), set-major
    start = time.time()
    samples = sample_classes(ldm, labels_rep, sizes.eval_steps, seed, device)  # (S * N, 3, S, S)
    seconds = time.time() - start
    top1 = (_predict(clf, preprocess, samples, device) == labels_rep).float().mean().item()
    hwc = samples.view(sizes.eval_samples, len(gt), *samples.shape[1:]).permute(0, 1, 3, 4, 2)
    n_way = eval_metrics.evaluate(
        gt.permute(0, 2, 3, 1), hwc, metrics=["n_way"], classifier=(clf, preprocess), n_way=min(50, n_classes),
        device=device,
    )["scores"]  # fmt: skip
    report["ldm_samples_of_test_classes"] = {
        "plms_steps": sizes.eval_steps,
        "samples_per_class": sizes.eval_samples,
        "top1_all_classes": top1,
        "n_way_top1 (gt class = classifier on the GOD stimulus)": n_way.get("top-1-class"),
        "sampling_seconds": seconds,
    }
    _save_grid(gt, hwc.permute(0, 1, 4, 2, 3), out / "ldm_samples.png")
    return report


def _save_grid(gt: torch.Tensor, samples: torch.Tensor, path: Path, rows: int = 10) -> None:
    """Each row: a GOD test stimulus, then the LDM's samples of its class (uint8 (N, 3, S, S), (K, N, 3, S, S))."""
    tiles = torch.cat([gt[:rows, None], samples[:, :rows].transpose(0, 1)], dim=1)  # (rows, 1 + K, 3, S, S)
    grid = tiles.permute(0, 3, 1, 4, 2).flatten(2, 3).flatten(0, 1)  # (rows * S, (1 + K) * S, 3)
    Image.fromarray(grid.numpy()).save(path)


# ---- main ----------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    """Train what is missing under `args.out`, measure, and return the report."""
    overrides = {k: v for k, v in vars(args).items() if k in SIZE_FIELDS and v is not None}
    sizes = replace(PRESETS[args.preset], **overrides)
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out, data_dir = Path(args.out), Path(args.data_dir)
    vq_path, ldm_dir, clf_path = out / "vq.pth", out / "label2img", out / "classifier.pth"
    budget_end = time.time() + 60 * args.minutes
    seconds: dict[str, float] = {}

    start = time.time()
    images, labels = draw_class_images(data_dir, sizes.per_class, seed=args.seed, image_size=args.img_size)
    images, labels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    n_classes = int(labels.max()) + 1
    config = ldm_config(sizes, args.img_size, n_classes)
    seconds["draw_images"] = time.time() - start
    log.info("[data] %d images of %d categories (%d px) in %.1f s", len(images), n_classes, args.img_size,
             seconds["draw_images"])  # fmt: skip

    def deadline(part: str) -> float:
        return min(budget_end, time.time() + TIME_SHARE[part] * 60 * args.minutes)

    trained = []
    if args.overwrite or not (ldm_dir / "model.ckpt").is_file():
        start = time.time()
        if args.overwrite or not vq_path.is_file():
            vq = train_vq(config, images, sizes, deadline("vq"), device)
            save_checkpoint({"state_dict": {k: v.cpu() for k, v in vq.state_dict().items()},
                             "config": config["model"]["params"]["first_stage_config"]}, vq_path)  # fmt: skip
            seconds["vq"] = time.time() - start
            trained.append("vq")
        vq = instantiate_from_config(load_checkpoint(vq_path)["config"])
        vq.load_state_dict(load_checkpoint(vq_path)["state_dict"])
        start = time.time()
        ldm, steps = train_ldm(config, vq.to(device), images, labels, class_names(data_dir), sizes,
                               deadline("ldm"), device)  # fmt: skip
        write_label2img(ldm, config, ldm_dir, steps)
        seconds["ldm"] = time.time() - start
        trained.append("ldm")
    if args.overwrite or not clf_path.is_file():
        start = time.time()
        first_stage = build_ldm(config, use_time_cond=False)
        load_ldm_checkpoint(first_stage, ldm_dir / "model.ckpt", ignore_cond_stage=False,
                            ignore_keys=("model.diffusion_model.time_embed_condtion.",))  # fmt: skip
        degraded = _vq_roundtrip(first_stage.to(device).eval(), images, device)
        clf = train_classifier(images, degraded, labels, n_classes, args.img_size, sizes, deadline("classifier"),
                               device)  # fmt: skip
        save_classifier(clf, clf_path)
        seconds["classifier"] = time.time() - start
        trained.append("classifier")
    log.info("trained %s; reused the rest in %s", trained or "nothing", out)

    report_path = out / "report.json"
    if args.no_eval or (not trained and report_path.is_file()):
        return json.loads(report_path.read_text()) if report_path.is_file() else {}
    start = time.time()
    ldm = build_ldm(OmegaConf.to_container(OmegaConf.load(ldm_dir / "config.yaml")), use_time_cond=False)
    untrained = ("model.diffusion_model.time_embed_condtion.",)  # left out, as in training
    load_ldm_checkpoint(ldm, ldm_dir / "model.ckpt", ignore_cond_stage=False, ignore_keys=untrained)
    held = draw_class_images(data_dir, sizes.heldout_per_class, seed=args.seed + 1, image_size=args.img_size)
    held = (torch.from_numpy(held[0]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(held[1]))
    report = measure(ldm.to(device).eval(), clf_path, held, _god_stimuli(data_dir, args.img_size), sizes,
                     args.seed, device, out)  # fmt: skip
    seconds["measure"] = time.time() - start
    report |= {"seconds": seconds, "sizes": asdict(sizes), "trained_now": trained}
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    log.info("report %s:\n%s", report_path, json.dumps({k: report[k] for k in report if k != "sizes"}, indent=1))
    return report


SIZE_FIELDS = {f.name for f in fields(DemoSizes)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="a folder written by make_synthetic_data.py")
    parser.add_argument("--out", default="pretrains/demo")
    parser.add_argument("--img_size", type=int, default=32, help="image side of the models (a multiple of 16)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--minutes", type=float, default=12.0, help="time guard of the training (all three)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="retrain models whose files exist")
    parser.add_argument("--no_eval", action="store_true", help="skip the measurements (report.json)")
    sizes = parser.add_argument_group("sizes (default: the preset)")
    for f in fields(DemoSizes):
        sizes.add_argument(f"--{f.name}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    if args.img_size % 16:
        parser.error(f"--img_size must be a multiple of 16, got {args.img_size}")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    main(parse_args())
