"""The largest Stage B batch that fits in a memory budget (24 GB and 80 GB), with bf16 and activation checkpointing.

On a GPU it is measured: one training step per candidate batch, doubling and then bisecting, a batch fitting when
`max_memory_reserved` plus an allowance for the CUDA context stays within the budget; budgets beyond the card are
extrapolated from the measured growth per sample, and say so. On a CPU (or as a cross-check on a GPU) it is
estimated without running anything real: the model runs on the meta device, and the bytes autograd saves for the
backward pass are counted (`saved_tensors_hooks`), at batch 1 and 2 to separate the per-sample part.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

import models

BUDGETS_GIB = (24, 80)
CONTEXT_BYTES = 1 << 30  # CUDA context, cuBLAS/cuDNN workspaces: outside the caching allocator's counts
CONFIGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))  # (dtype, activation checkpointing)


# ---- measured, on a GPU ---------------------------------------------------------------------------------------------


def peak_bytes(step: Callable[[int], None], batch: int, device: torch.device) -> float:
    """Reserved-memory peak of one step at `batch` (math.inf when it runs out of memory)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        step(batch)
        torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        return math.inf
    finally:
        torch.cuda.empty_cache()
    return float(torch.cuda.max_memory_reserved(device))


def largest_fitting(
    step: Callable[[int], None], device: torch.device, budget: float, max_batch: int
) -> tuple[int, dict[int, float]]:
    """Largest batch whose step fits `budget` bytes (doubling, then bisection); returns it and the peaks seen."""
    peaks: dict[int, float] = {}

    def fits(b: int) -> bool:
        peaks.setdefault(b, peak_bytes(step, b, device))
        return peaks[b] + CONTEXT_BYTES <= budget

    lo, hi = 0, None
    b = 1
    while b <= max_batch:
        if not fits(b):
            hi = b
            break
        lo, b = b, b * 2
    if hi is None:
        return lo, peaks
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, peaks


def measured_search(
    set_config: Callable[[str, bool], None], step: Callable[[int], None], device: torch.device, max_batch: int
) -> list[dict[str, Any]]:
    """For each (dtype, checkpointing): the largest batch per budget on this GPU, extrapolated past its memory."""
    total = torch.cuda.get_device_properties(device).total_memory
    out = []
    for dtype, ckpt in CONFIGS:
        set_config(dtype, ckpt)
        row: dict[str, Any] = {"dtype": dtype, "checkpointing": ckpt, "method": "measured"}
        for gib in BUDGETS_GIB:
            budget = gib * 2**30
            best, peaks = largest_fitting(step, device, min(budget, total), max_batch)
            finite = sorted((b, p) for b, p in peaks.items() if math.isfinite(p))
            row[f"peaks_{gib}gib"] = {b: p for b, p in finite}
            if budget <= total or best >= max_batch:
                row[f"max_batch_{gib}gib"] = best
            elif len(finite) >= 2:  # beyond this card: extend the measured growth per sample
                (b1, p1), (b2, p2) = finite[-2:]
                per_sample = (p2 - p1) / (b2 - b1)
                row[f"max_batch_{gib}gib"] = int(b2 + (budget - CONTEXT_BYTES - p2) // per_sample)
                row[f"note_{gib}gib"] = f"extrapolated: the card has {total / 2**30:.1f} GiB"
            else:
                row[f"max_batch_{gib}gib"] = None
                row[f"note_{gib}gib"] = "too few fitting batches on this card to extrapolate"
        out.append(row)
    return out


# ---- estimated, on the meta device ----------------------------------------------------------------------------------


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the distinct storages autograd saves for the backward pass (parameters and buffers excluded).

    Bytes are attributed to the UNet block running at the time (`current`), to find the largest one.
    """

    def __init__(self, exclude: set[int]):
        self.exclude, self.seen, self.total = exclude, set(), 0
        self.per_block: dict[str, int] = {}
        self.current: str | None = None
        super().__init__(self.pack, lambda t: t)

    def add(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
            if self.current is not None:
                self.per_block[self.current] = self.per_block.get(self.current, 0) + storage.nbytes()
        return t

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        return self.add(t)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Make SDPA on the meta device save what a fused kernel saves (q, k, v, output, log-sum-exp).

    On meta tensors SDPA takes its math path, which keeps the (L, M) attention matrix for backward; the CUDA and
    CPU kernels that real runs use do not. The CPU flash kernel's op has a meta implementation and a backward
    that saves the same tensors as the CUDA ones, so it stands in for them.
    """
    math_path = F.scaled_dot_product_attention

    def fused(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0, **kw: Any
    ) -> torch.Tensor:
        if attn_mask is not None or dropout_p or any(kw.values()):
            raise NotImplementedError("the estimate covers attention without mask, dropout or causality only")
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = math_path


def _unet_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The blocks the UNet checkpoints one by one."""
    blocks = {f"input_blocks.{i}": b for i, b in enumerate(unet.input_blocks)}
    blocks["middle_block"] = unet.middle_block
    return blocks | {f"output_blocks.{i}": b for i, b in enumerate(unet.output_blocks)}


def saved_bytes(model: torch.nn.Module, batch: dict, checkpointing: bool) -> SavedBytes:
    """Run one training forward on the meta device and count what it keeps for backward.

    With checkpointing the blocks' internals are not kept (the checkpoint's own hooks take them), but their
    inputs are: the forward pre-hooks count those.
    """
    unet = model.model.diffusion_model
    unet.use_checkpoint = checkpointing
    exclude = {t.untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
    counter = SavedBytes(exclude)
    handles = []
    for name, block in _unet_blocks(unet).items():

        def enter(module: torch.nn.Module, inputs: tuple, name: str = name) -> None:
            counter.current = name
            if checkpointing:
                for t in inputs:
                    if isinstance(t, torch.Tensor):
                        counter.add(t)

        handles.append(block.register_forward_pre_hook(enter))
        handles.append(block.register_forward_hook(lambda *_: setattr(counter, "current", None)))
    try:
        with counter, fused_attention():
            models.stage_b_loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return counter


def estimate(model: torch.nn.Module, make_batch: Callable[[int, torch.dtype], dict]) -> list[dict[str, Any]]:
    """Estimated largest batch per budget for each (dtype, checkpointing), from a meta-device model.

    peak(b) = weights (fp32) + gradients and AdamW moments of the trained parameters + autograd's saved tensors
    at batch b (+ with checkpointing, the largest block's internals, recomputed during backward; + in bf16, the
    bf16 weight copies backward keeps). Transient buffers of the backward pass and allocator slack are not
    counted, so real peaks run higher: treat the batches as upper bounds.
    """
    model.train()
    models.stage_b_trainable(model)  # sets requires_grad to what Stage B trains
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    in_backward = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("first_stage_model."))
    static = 4 * total + 4 * trained + 8 * trained
    out = []
    for dtype, ckpt in CONFIGS:
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        model.to(torch_dtype)  # autocast does not act on the meta device; casting the model stands in for it
        one, two = (saved_bytes(model, make_batch(b, torch_dtype), ckpt) for b in (1, 2))
        per_sample = two.total - one.total
        fixed = one.total - per_sample + (2 * in_backward if dtype == "bf16" else 0)
        recompute = max(saved_bytes(model, make_batch(1, torch_dtype), False).per_block.values()) if ckpt else 0
        row: dict[str, Any] = {
            "dtype": dtype,
            "checkpointing": ckpt,
            "method": "estimate (meta device, saved tensors)",
            "static_bytes": static + fixed,
            "per_sample_bytes": per_sample + recompute,
        }
        for gib in BUDGETS_GIB:
            free = gib * 2**30 - CONTEXT_BYTES - static - fixed
            row[f"max_batch_{gib}gib"] = max(0, int(free // (per_sample + recompute)))
        out.append(row)
    model.to(torch.float32)
    return out
