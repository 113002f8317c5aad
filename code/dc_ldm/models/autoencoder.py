"""First-stage autoencoders of the latent diffusion model: VQ (the published MinD-Vis one) and KL.

Keys match the LDM release (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`, `quantize.embedding.*`).
The published GAN/LPIPS first-stage training is not carried: MinD-Vis keeps the autoencoder frozen. A small VQ
autoencoder can still be trained from scratch with `VQModel.training_loss` (reconstruction + codebook loss).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from checkpoint import load_checkpoint
from dc_ldm.modules.diffusionmodules.model import Decoder, Encoder
from dc_ldm.modules.distributions import DiagonalGaussianDistribution
from dc_ldm.modules.vqvae.quantize import VectorQuantizer

logger = logging.getLogger("mindvis.dc_ldm")

_SHARED_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "z_channels", "dropout")
_ENCODER_KEYS = (*_SHARED_KEYS, "in_channels", "double_z")
_DECODER_KEYS = (*_SHARED_KEYS, "out_ch", "give_pre_end", "tanh_out")
_VQ_BETA = 0.25  # commitment weight of the published VQ first stages


def build_encoder_decoder(ddconfig: Mapping) -> tuple[Encoder, Decoder]:
    """Encoder and Decoder from one `ddconfig` mapping, whose keys each network takes its share of."""
    known = set(_ENCODER_KEYS) | set(_DECODER_KEYS)
    unknown = sorted(set(ddconfig) - known)
    if unknown:
        raise ValueError(f"first-stage ddconfig: unsupported keys {unknown}; expected a subset of {sorted(known)}")
    encoder = Encoder(**{k: ddconfig[k] for k in _ENCODER_KEYS if k in ddconfig})
    decoder = Decoder(**{k: ddconfig[k] for k in _DECODER_KEYS if k in ddconfig})
    return encoder, decoder


def _check_options(owner: str, lossconfig: Mapping | None, **unsupported: object) -> None:
    """Reject options MinD-Vis never sets; note a first-stage training loss that will not be built."""
    for name, value in unsupported.items():
        if value is not None:
            raise ValueError(f"{owner}: `{name}` is not supported (published MinD-Vis configs leave it unset)")
    target = (lossconfig or {}).get("target")
    if target not in (None, "torch.nn.Identity"):
        logger.warning("%s: lossconfig target %s is ignored; the first stage is not trained here", owner, target)


def _load_weights(model: nn.Module, ckpt_path: str | None, ignore_keys: Sequence[str]) -> None:
    """Load `state_dict` of a first-stage checkpoint (keys starting with any of `ignore_keys` dropped)."""
    if ckpt_path is None:
        return
    state = load_checkpoint(ckpt_path)
    state = state.get("state_dict", state)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_keys)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    logger.info("%s: loaded %s; missing %s, unexpected %s", type(model).__name__, ckpt_path, missing, unexpected)


class VQModel(nn.Module):
    """VQ autoencoder: Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder.

    `encode` returns `(quant, codebook_loss, (None, None, indices))` as the taming VQModel does;
    `VQModelInterface` is the variant LatentDiffusion uses.
    """

    def __init__(
        self,
        embed_dim: int,
        n_embed: int,
        ddconfig: Mapping,
        lossconfig: Mapping | None = None,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
        remap: str | None = None,
        sane_index_shape: bool = False,
    ):
        super().__init__()
        _check_options(type(self).__name__, lossconfig, colorize_nlabels=colorize_nlabels, remap=remap)
        self.image_key, self.monitor = image_key, monitor
        self.encoder, self.decoder = build_encoder_decoder(ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=_VQ_BETA, sane_index_shape=sane_index_shape)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        _load_weights(self, ckpt_path, ignore_keys)

    def _latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))  # (N, embed_dim, h, w)

    def _image(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))  # (N, out_ch, H, W)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Images (N, C, H, W) -> (quantised latents (N, embed_dim, h, w), codebook loss, (None, None, indices))."""
        return self.quantize(self._latent(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantised latents (N, embed_dim, h, w) -> images (N, out_ch, H, W)."""
        return self._image(quant)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, C, H, W) -> (reconstructions (N, out_ch, H, W), codebook loss ())."""
        quant, codebook_loss, _ = self.quantize(self._latent(x))
        return self._image(quant), codebook_loss

    def training_loss(self, x: torch.Tensor, reconstruction: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
        """Images (N, C, H, W) in [-1, 1] -> (loss, logs) for training from scratch.

        loss = mean |x - x_rec| (or squared, `reconstruction="l2"`) + the quantiser's codebook/commitment loss.
        Logs also carry the codebook perplexity (number of codes in effective use in this batch).
        """
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"VQModel.training_loss: reconstruction must be 'l1' or 'l2', got {reconstruction!r}")
        quant, codebook_loss, (_, _, indices) = self.quantize(self._latent(x))
        error = self._image(quant).float() - x.float()  # (N, C, H, W)
        rec_loss = error.abs().mean() if reconstruction == "l1" else error.square().mean()
        loss = rec_loss + codebook_loss
        usage = torch.bincount(indices.flatten(), minlength=self.quantize.n_embed).float() / indices.numel()
        perplexity = torch.exp(-(usage * torch.log(usage.clamp_min(1e-10))).sum())
        logs = {"loss": loss.item(), "rec_loss": rec_loss.item(), "codebook_loss": codebook_loss.item()}
        return loss, logs | {"perplexity": perplexity.item()}


class VQModelInterface(VQModel):
    """The VQ first stage LatentDiffusion uses: it diffuses the latents *before* quantisation."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> pre-quantisation latents (N, embed_dim, h, w) (after quant_conv)."""
        return self._latent(x)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latents (N, embed_dim, h, w) -> images (N, out_ch, H, W); snapped to the codebook unless told not to."""
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self._image(quant)


class AutoencoderKL(nn.Module):
    """KL-regularised autoencoder: `encode` gives a DiagonalGaussianDistribution over latents, `decode` images."""

    def __init__(
        self,
        ddconfig: Mapping,
        lossconfig: Mapping | None,
        embed_dim: int,
        ckpt_path: str | None = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: int | None = None,
        monitor: str | None = None,
    ):
        super().__init__()
        _check_options(type(self).__name__, lossconfig, colorize_nlabels=colorize_nlabels)
        if not ddconfig.get("double_z", True):
            raise ValueError("AutoencoderKL: ddconfig.double_z must be true (the encoder outputs mean and logvar)")
        self.image_key, self.monitor = image_key, monitor
        self.encoder, self.decoder = build_encoder_decoder(ddconfig)
        self.quant_conv = nn.Conv2d(2 * ddconfig["z_channels"], 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        _load_weights(self, ckpt_path, ignore_keys)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Images (N, C, H, W) -> posterior over latents (N, embed_dim, h, w)."""
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))  # moments (N, 2 * embed_dim, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, embed_dim, h, w) -> images (N, out_ch, H, W)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Images (N, C, H, W) -> (reconstruction from a posterior sample (N, out_ch, H, W), posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior
