"""The training engine with the Stage A step: schedule, parameter groups, accumulation, device-side sums."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import runtime
from checkpoint import save_checkpoint
from checkpoint_layouts import load_weights
from correlation import row_pearson
from dataset import FMRIDataset
from engine import AmpScaler, NonFiniteLossError, Schedule, make_loader, make_optimizer, train_one_epoch
from errors import CheckpointError, UsageError
from readers.arrays import fit_voxels
from resume import resume_training
from runtime import DistInfo, precision_hint
from sc_mbm.mae_for_fmri import MAEforFMRI
from sc_mbm.reconstruction import score
from sc_mbm.training import mae_step, pick_examples
from sc_mbm.visualize import save_reconstruction_figure

CPU = torch.device("cpu")
P, L = 4, 6  # patch size and patches of the toy model


class ToyMAE(nn.Module):
    """The (loss, pred, mask) interface of MAEforFMRI with a per-patch linear map; masking from `noise` if given."""

    def __init__(self, nan_after: int | None = None):
        super().__init__()
        self.lin = nn.Linear(P, P)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + L, 2), requires_grad=False)
        self.nan_after, self.calls = nan_after, 0

    def forward(self, fmri, mask_ratio=0.75, noise=None):
        x = fmri.reshape(len(fmri), L, P)  # (N, L, p)
        pred = self.lin(x)
        mask = torch.ones(len(fmri), L)
        if noise is not None:  # as the real model: keep the int(L * (1 - r)) tokens of smallest noise
            keep = torch.argsort(noise, dim=1)[:, : int(L * (1 - mask_ratio))]
            mask = mask.scatter(1, keep, 0.0)
        loss = (pred - x).pow(2).mean()
        self.calls += 1
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float("nan")
        return loss, pred, mask


def _cfg(**overrides) -> SimpleNamespace:
    values = dict(lr=1e-2, min_lr=0.0, warmup_epochs=1, num_epoch=4, accum_iter=1, clip_grad=None, mask_ratio=0.5)
    return SimpleNamespace(**{**values, "log_every": 100, **overrides})


def _data(n: int = 16, seed: int = 0) -> FMRIDataset:
    return FMRIDataset(np.random.default_rng(seed).standard_normal((n, 1, L * P)).astype(np.float32))


def _single() -> DistInfo:
    return DistInfo(rank=0, local_rank=0, world_size=1, device=CPU)


def _epoch(model, loader, optimizer, amp, epoch, cfg) -> dict:
    schedule = Schedule(cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.num_epoch)
    return train_one_epoch(
        model,
        loader,
        optimizer,
        amp,
        epoch=epoch,
        step=mae_step(cfg.mask_ratio),
        schedule=schedule,
        accum_iter=cfg.accum_iter,
        clip_grad=cfg.clip_grad,
        log_every=cfg.log_every,
    )


def _train(model, data, batch_size, cfg, epochs=1) -> list[dict]:
    loader = make_loader(data, batch_size, seed=3, dist_info=_single())
    optimizer = make_optimizer(model, cfg.lr, 0.05)
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append(_epoch(model, loader, optimizer, AmpScaler("fp32", CPU), epoch, cfg))
    return out


def test_lr_warms_up_linearly_then_follows_a_half_cosine_to_min_lr():
    lr, min_lr, warm, total = 1.0, 0.1, 4, 12
    schedule = Schedule(lr, min_lr, warm, total)
    assert [schedule(e) for e in (0, 1, 2, 4)] == [0.0, 0.25, 0.5, 1.0]
    assert schedule(8) == pytest.approx((lr + min_lr) / 2)
    assert schedule(total) == pytest.approx(min_lr)
    assert Schedule(lr, min_lr, 0, total)(0) == lr  # no warm-up
    later = [schedule(e / 10) for e in range(40, 121)]
    assert all(a >= b for a, b in zip(later, later[1:], strict=False))
    # the schedule is a function of the run's target length (a resumed run with more epochs decays slower)
    assert Schedule(lr, min_lr, warm, 20)(6) > schedule(6)
    assert {Schedule(0.3, 0.3, 0, 5)(e) for e in (0, 1.5, 5)} == {0.3}  # Stage B: constant


def test_no_weight_decay_on_biases_and_1d_parameters_and_frozen_ones_left_out():
    model = MAEforFMRI(64, patch_size=16, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2)
    no_decay, decay = make_optimizer(model, 1e-3, 0.05).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert (no_decay["weight_decay"], decay["weight_decay"]) == (0.0, 0.05)
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "blocks.0.norm1.weight" in no_decay_names and "decoder_pred.bias" in no_decay_names
    assert "blocks.0.attn.qkv.weight" in decay_names and "patch_embed.proj.weight" in decay_names
    assert all(p.ndim >= 2 for p in decay["params"]) and all(
        p.ndim <= 1 or names[id(p)].endswith(".bias") for p in no_decay["params"]
    )
    assert "pos_embed" not in no_decay_names | decay_names  # fixed sin-cos: not trained
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert no_decay_names | decay_names == trainable and not no_decay_names & decay_names


def test_gradient_accumulation_equals_the_large_batch():
    """Two accumulated half-batches (clipped after accumulation) give the weights of one full batch."""
    torch.manual_seed(0)
    a = ToyMAE()
    b = ToyMAE()
    b.load_state_dict(a.state_dict())
    _train(a, _data(), 8, _cfg(clip_grad=0.5), epochs=2)
    _train(b, _data(), 4, _cfg(clip_grad=0.5, accum_iter=2), epochs=2)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(a.lin.weight, ToyMAE().lin.weight)


def test_epoch_means_are_sample_weighted_and_match_a_host_computation():
    """With lr 0 the model is fixed, so the device-side running sums can be checked against a plain computation."""
    torch.manual_seed(0)
    model, data = ToyMAE(), _data(10)
    stats = _train(model, data, 4, _cfg(lr=0.0, log_every=1))[0]  # batches of 4, 4, 2
    with torch.no_grad():
        x = torch.from_numpy(data.fmri)
        pred = model.lin(x.reshape(10, L, P))
        losses = (pred - x.reshape(10, L, P)).pow(2).mean(dim=(1, 2))
        cors = row_pearson(pred.flatten(1), x.flatten(1))
    assert stats["loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert stats["cor"] == pytest.approx(cors.mean().item(), rel=1e-5)
    assert stats["samples_per_s"] > 0 and stats["lr"] == 0.0


def test_non_finite_loss_stops_with_epoch_and_step():
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 0, step 3 of 4"):
        _train(ToyMAE(nan_after=3), _data(16), 4, _cfg())


def test_precision_choices_on_cpu():
    assert AmpScaler("auto", CPU).precision == "fp32"
    assert not AmpScaler("fp32", CPU).scaler.is_enabled()
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        AmpScaler("fp16", CPU)
    bf16 = AmpScaler("bf16", CPU)
    torch.manual_seed(0)
    model = ToyMAE()
    loader = make_loader(_data(8), 4, 0, _single())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    stats = _epoch(model, loader, optimizer, bf16, 0, _cfg(clip_grad=1.0))
    assert math.isfinite(stats["loss"]) and bf16.state_dict() == {}
    bf16.load_state_dict({})  # published fp32 checkpoints store an empty scaler state


def test_precision_hint_only_when_auto_kept_fp32_on_a_native_bf16_cpu(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        hint = precision_hint("auto", "fp32", CPU)
        assert ("--precision bf16" in hint) if native else hint is None
        assert precision_hint("fp32", "fp32", CPU) is None and precision_hint("auto", "bf16", CPU) is None
        assert precision_hint("auto", "bf16", torch.device("cuda")) is None


def test_evaluate_scores_masked_patches_with_fixed_masks_and_leaves_the_rng_alone():
    class AntiMasked(ToyMAE):
        """Copies the visible patches and predicts the negated input on masked ones."""

        def forward(self, fmri, mask_ratio=0.75, noise=None):
            loss, _, mask = super().forward(fmri, mask_ratio, noise)
            x = fmri.reshape(len(fmri), L, P)
            return loss, torch.where(mask[..., None].bool(), -x, x), mask

    model, fmri = AntiMasked(), torch.from_numpy(_data(6).fmri)
    state = torch.get_rng_state()
    first = score(model, fmri, 0.5, batch_size=4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert first["masked_cor"] == pytest.approx(-1.0, abs=1e-5)
    assert -1.0 < first["cor"] < 1.0
    assert score(model, fmri, 0.5, batch_size=6, seed=1) == pytest.approx(first)
    assert score(model, fmri, 0.5, batch_size=4, seed=2)["cor"] != first["cor"]


def test_loader_order_depends_on_seed_and_epoch_and_ranks_get_disjoint_shares():
    data = _data(11)
    shares = []
    for rank in range(2):
        loader = make_loader(data, 4, 5, DistInfo(rank, rank, 2, CPU))
        loader.sampler.set_epoch(1)
        shares.append(list(loader.sampler))
    assert len(shares[0]) == len(shares[1]) == 5 and not set(shares[0]) & set(shares[1])
    one = make_loader(data, 4, 5, _single()).sampler
    orders = []
    for epoch in (0, 1, 0):
        one.set_epoch(epoch)
        orders.append(list(one))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[0]) == list(range(11))


def test_fit_voxels_wrap_pads_or_truncates():
    x = np.arange(10, dtype=np.float32).reshape(2, 1, 5)
    np.testing.assert_array_equal(fit_voxels(x, 7)[0, 0], [0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(fit_voxels(x, 3)[1, 0], [5, 6, 7])
    np.testing.assert_array_equal(fit_voxels(x, 5), x)


def test_load_weights_names_missing_keys_and_non_finite_values(tmp_path):
    model = MAEforFMRI(64, patch_size=16, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2)
    state = model.state_dict()
    del state["decoder_pred.weight"]
    with pytest.raises(CheckpointError, match=r"x\.pth: model state lacks 1 key\(s\): \['decoder_pred.weight'\]"):
        load_weights(model, state, tmp_path / "x.pth")
    state = model.state_dict()
    state["norm.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_weights(model, state, tmp_path / "x.pth")
    state = model.state_dict()
    state["norm.bias"][0] = float("nan")  # the values are the readers' to check, here the resume's
    save_checkpoint({"model": state, "optimizer": {}, "epoch": 0, "rng": []}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match=r"x\.pth: weights hold NaN or inf values in \['norm.bias'\]"):
        resume_training(
            tmp_path / "x.pth",
            None,
            model,
            model_key="model",
            optimizer=None,
            amp=None,
            dist_info=None,
            schedule_fields=(),
        )


def test_reconstruction_figure_is_written(tmp_path):
    torch.manual_seed(0)
    model = MAEforFMRI(64, patch_size=16, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2)
    examples = pick_examples(np.random.default_rng(0).standard_normal((10, 1, 64)).astype(np.float32), 3)
    assert examples.shape == (3, 1, 64)
    path = save_reconstruction_figure(model, examples, 0.75, "fp32", tmp_path / "r.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and model.training
