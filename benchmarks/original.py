"""The original MinD-Vis (zjc062/mind-vis) as the benchmarks' baseline: its code, imported from a checkout at run
time, with our weights loaded into its models.

    python benchmarks/bench_generation.py --quick --original /path/to/mind-vis

Nothing of the original is copied into this repository. Both trees have top-level modules of the same names
(`dc_ldm`, `sc_mbm`, `config`, ...), so the original's are imported with ours taken out of `sys.modules` and
`sys.path`, kept aside afterwards, and swapped in again whenever its code resolves a class by name
(`instantiate_from_config` while a model is built).

The original was written for torch 1.12, pytorch-lightning 1.6 and timm 0.5.4. To import it on current versions
these modules are provided while its code is imported (import-time shims, nothing of its code is changed):

- `torch._six` (removed in torch 2.0) with `inf`: its Stage A trainer imports it;
- `pytorch_lightning.utilities.distributed` (moved to `.rank_zero` in Lightning 1.8) with `rank_zero_only`: its
  ddpm.py imports it;
- `wandb` (not a dependency here): its ldm_for_fmri.py imports it; nothing here calls it.

One setting after building: its timm `Block`s get `fused_attn = False`, the explicit softmax attention timm 0.5.4
computed (timm >= 0.9 would route them through SDPA, which the original never ran). Its CUDA-only paths
(`torch.cuda.amp.autocast`/`GradScaler` in its Stage A loop, the samplers moving buffers to CUDA) are guarded or
disable themselves on a CPU, so they run unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

import repo  # noqa: F401  (puts code/ on sys.path)
from errors import UsageError

# Top-level modules both trees define: ours leave sys.modules while the original's are active.
SHARED_NAMES = (
    "dc_ldm",
    "sc_mbm",
    "config",
    "dataset",
    "eval_metrics",
    "gen_eval",
    "stageA1_mbm_pretrain",
    "stageA2_mbm_finetune",
    "stageB_ldm_finetune",
)
# Files (and a line in each) that identify a checkout of the original.
SIGNATURE = {
    "code/sc_mbm/mae_for_fmri.py": "class fmri_encoder",
    "code/sc_mbm/trainer.py": "class NativeScalerWithGradNormCount",
    "code/dc_ldm/ldm_for_fmri.py": "class fLDM",
    "code/dc_ldm/models/diffusion/ddpm.py": "class LatentDiffusion",
}


def _shims() -> dict[str, ModuleType]:
    """The modules the original imports that current libraries no longer have (see the module docstring).

    pytorch-lightning is not our dependency: without it the Lightning shim is left out, and importing the original's
    ddpm.py fails with one line saying to install it (`import_error`)."""
    six = types.ModuleType("torch._six")
    six.inf = math.inf
    shims = {"torch._six": six, "wandb": types.ModuleType("wandb")}
    try:
        from pytorch_lightning.utilities import rank_zero_only
    except ImportError:
        return shims
    distributed = types.ModuleType("pytorch_lightning.utilities.distributed")
    distributed.rank_zero_only = rank_zero_only
    return shims | {"pytorch_lightning.utilities.distributed": distributed}


def _is_shared(name: str) -> bool:
    return name.split(".")[0] in SHARED_NAMES


class OriginalCheckout:
    """A checkout of zjc062/mind-vis: import its modules and build its models with our weights."""

    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser().resolve()
        missing = [f for f, line in SIGNATURE.items() if line not in _read(self.root / f)]
        if missing:
            raise UsageError(
                f"--original {path}: not a checkout of the original MinD-Vis (zjc062/mind-vis): "
                f"{'nothing' if len(missing) == len(SIGNATURE) else 'not all'} of its files found "
                f"(missing or different: {', '.join(missing)}); clone https://github.com/zjc062/mind-vis and pass "
                "its folder"
            )
        self.code = self.root / "code"
        self.commit = _git_commit(self.root)
        self._modules: dict[str, ModuleType] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside the block the original's modules (and shims) are the importable ones; ours outside it."""
        shims = {k: v for k, v in _shims().items() if k not in sys.modules}
        ours = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_shared(k)}
        path = sys.path[:]
        own_dirs = {str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "code")}
        sys.path[:] = [str(self.code)] + [p for p in path if str(Path(p or ".").resolve()) not in own_dirs]
        sys.modules.update(self._modules | shims)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its deprecated-API warnings (torch.cuda.amp, ...)
                yield
        finally:
            self._modules.update({k: sys.modules.pop(k) for k in list(sys.modules) if _is_shared(k)})
            for k in shims:
                sys.modules.pop(k, None)
            sys.path[:] = path
            sys.modules.update(ours)

    def module(self, name: str) -> ModuleType:
        """One of the original's modules, e.g. `sc_mbm.trainer`."""
        with self.active(), contextlib.redirect_stdout(io.StringIO()):
            try:
                return importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name is None or _is_shared(e.name):
                    raise
                raise UsageError(
                    f"--original {self.root}: its {name} needs the package {e.name!r}, which is not installed here "
                    f"(the original's own dependency, not ours): pip install {e.name.split('.')[0].replace('_', '-')}"
                ) from None

    # ---- its models, with our weights ----------------------------------------------------------------------

    def mae(self, arch: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> nn.Module:
        """Its `sc_mbm.mae_for_fmri.MAEforFMRI` of architecture `arch` (our keyword names) holding `state`."""
        cls = self.module("sc_mbm.mae_for_fmri").MAEforFMRI
        with self.active(), contextlib.redirect_stdout(io.StringIO()):
            model = cls(**arch)
        _load_same(model, state, "MAEforFMRI")
        return _explicit_timm_attention(model)

    def ldm(self, config: Mapping[str, Any], ours: nn.Module, mae_meta: Mapping[str, Any]) -> nn.Module:
        """Its LatentDiffusion with its fMRI conditioner, built as its `fLDM` builds it, holding `ours`' weights.

        `config` is the label2img config.yaml (a dict, `model:` section); `mae_meta` the encoder architecture.
        """
        config = OmegaConf.create(dict(config))
        unet = config.model.params.unet_config.params
        global_pool, use_time_cond = bool(unet.get("global_pool", False)), bool(unet.get("use_time_cond", True))
        state = ours.state_dict()
        prefix = "cond_stage_model.mae."
        mae_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        num_voxels = ours.cond_stage_model.mae.num_voxels
        ldm_module, util = self.module("dc_ldm.ldm_for_fmri"), self.module("dc_ldm.util")
        with self.active(), contextlib.redirect_stdout(io.StringIO()):
            model = util.instantiate_from_config(config.model)
            model.cond_stage_trainable = True
            metafile = {"config": SimpleNamespace(**mae_meta), "model": mae_state}
            model.cond_stage_model = ldm_module.cond_stage_model(metafile, num_voxels, unet.context_dim, global_pool)
        model.ddim_steps = 250
        model.p_channels, model.p_image_size = config.model.params.channels, config.model.params.image_size
        _load_same(model, state, "LatentDiffusion", computed=("lvlb_weights",))
        if use_time_cond != model.model.diffusion_model.use_time_cond:
            raise RuntimeError("the original's UNet was built without the requested use_time_cond")
        return _explicit_timm_attention(model).to(next(ours.parameters()).device)

    def vq(self, first_stage_config: Mapping[str, Any], ours: nn.Module) -> nn.Module:
        """Its first stage (`VQModelInterface`) from the same config section, holding `ours`' weights."""
        util = self.module("dc_ldm.util")
        self.module(first_stage_config["target"].rpartition(".")[0])  # a missing package: one line, not a traceback
        with self.active(), contextlib.redirect_stdout(io.StringIO()):
            model = util.instantiate_from_config(OmegaConf.create(dict(first_stage_config)))
        _load_same(model, ours.state_dict(), "VQModelInterface")
        return model.to(next(ours.parameters()).device).eval()

    def plms_sampler(self, model: nn.Module) -> Any:
        """Its PLMS sampler over its model."""
        return self.module("dc_ldm.models.diffusion.plms").PLMSSampler(model)

    def quiet(self) -> contextlib.AbstractContextManager:
        """Its modules active and its prints discarded (it prints progress and summaries unconditionally)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.active())
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))  # its tqdm bars
        return stack


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    top, commit = out.stdout.split()
    # A copy without its own .git (an unpacked archive) sits inside some other repository: that commit is not its own.
    return commit if Path(top).resolve() == root.resolve() else "unknown"


def _load_same(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, computed: tuple[str, ...] = ()) -> None:
    """Load our state dict into its model; every key must match except the buffers it computes itself (`computed`).

    The tensors are assigned, not copied: both models then share the weights' storage (half the memory).
    """
    result = model.load_state_dict(dict(state), strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in computed]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"our weights do not fit the original's {what}: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (has the checkout's architecture changed?)"
        )


def _explicit_timm_attention(model: nn.Module) -> nn.Module:
    """Set timm's attention modules to the explicit softmax path timm 0.5.4 had (the original's pinned version)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model
