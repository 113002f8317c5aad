"""Safe loading and atomic saving of checkpoints.

The published MinD-Vis `.pth` files pickle objects of the original code's classes
(`config.Config_MBM_fMRI`, `config.Config_MBM_finetune`, `config.Config_Generative_Model`,
sometimes a pytorch_lightning logger). `torch.load(weights_only=True)` refuses them and a
plain `torch.load` would run whatever a malicious file asks for. `load_checkpoint` unpickles
with an allow-list instead: tensors, numpy arrays and scalars, containers and primitive
types; the three config classes come back as our data-only classes of the same names
(`config.py`; attributes only, no code of the file's runs), other config and logger classes
as inert `PickledObject`s; any other global is refused with an error naming it and the file. The unpickler's BUILD
(setting an object's state) reaches only these data objects, never a function or a class: on an allowed function
it would be a setattr shared by the whole process (e.g. the defaults of torch's tensor rebuild). Before torch sees
a file, what torch would not read through this unpickler is refused: TorchScript archives (torch.load hands them
to torch.jit.load, whose `__setstate__` code can write files) and the legacy pre-1.6 and raw-pickle formats
(read by torch's legacy loader, which has unpickling steps of its own).

Every stage loads through `load_checkpoint` and writes through `save_checkpoint`.
"""

from __future__ import annotations

import collections
import os
import pickle
import random
import tempfile
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import config
from errors import UserError


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint asked for a class or function outside the allow-list."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not hold what a stage expects."""


class PickledObject(types.SimpleNamespace):
    """Inert stand-in for a pickled object of a class we do not import (e.g. `config.Config_MBM_fMRI`)."""

    _pickled_class: str = ""

    def __setstate__(self, state: Any) -> None:
        # Objects pickled with a (dict, slots) state tuple, or a plain dict; nothing else is accepted.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"unexpected state of type {type(state).__name__} for {self._pickled_class}")
        self.__dict__.update(state)

    def to_dict(self) -> dict:
        """The object's attributes as a plain dict."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _stand_in(module: str, name: str) -> type:
    return type(name, (PickledObject,), {"_pickled_class": f"{module}.{name}", "__module__": "checkpoint"})


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # protocol-2 pickles store bytes (numpy buffers) this way
    ("torch._utils", "_rebuild_tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *((m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar")),
}
# The original's config classes, rebuilt as our data-only classes of the same names (config.py), which pickle
# back under those names; other classes whose instances carry only data come back as PickledObject stand-ins.
_PUBLISHED_CONFIGS = ("Config_MBM_fMRI", "Config_MBM_finetune", "Config_Generative_Model")
_STAND_IN_MODULES = ("config", "pytorch_lightning.loggers", "lightning.pytorch.loggers")


class _StateCheckingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, whose BUILD is refused unless the object built is an instance of `buildable`.

    BUILD calls the object's `__setstate__` or sets its attributes; the object below the state on the stack may be
    any value the pickle made, an allowed function or class included. The C unpickler has no hook per opcode, hence
    the Python one. The pickle holds the structure, not the tensor data (separate zip records): 1000 parameters and
    their Adam state (4000 tensors) load in 130 ms instead of 96 ms with the C unpickler.
    """

    buildable: tuple[type, ...] = ()
    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        target = self.stack[-2] if len(self.stack) > 1 else None
        if not isinstance(target, self.buildable):
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafeCheckpointError(f"refused to set the state of {what!r} ({type(target).__name__}): only "
                                        "data objects may be rebuilt from a file")  # fmt: skip
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def _no_hooks(hooks: Any) -> None:
    if hooks:  # torch writes an empty OrderedDict; anything else would attach callables to the tensor
        raise UnsafeCheckpointError("refused a tensor with backward hooks: a file stores no callables")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)  # fmt: skip


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    _no_hooks(backward_hooks)
    names = [k for part in (state if isinstance(state, tuple) else (state,)) for k in (part or {})]
    if not all(isinstance(k, str) and not k.startswith("__") for k in names):
        raise UnsafeCheckpointError(f"refused a parameter whose state sets {names}")
    return torch._utils._rebuild_parameter_with_state(data, requires_grad, collections.OrderedDict(), state)


# torch's tensor rebuilds, checked: no hooks, no special attributes
_REBUILDS = {f.__name__: f for f in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state)}


class _RestrictedUnpickler(_StateCheckingUnpickler):
    buildable = (PickledObject, config._PublishedConfig, collections.OrderedDict, np.ndarray, np.dtype)

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILDS:
            return _REBUILDS[name]
        if (module, name) in _ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "config" and name in _PUBLISHED_CONFIGS:  # data-only classes of ours (config.py)
            return getattr(config, name)
        if any(module == m or module.startswith(m + ".") for m in _STAND_IN_MODULES):
            return _stand_in(module, name)
        raise UnsafeCheckpointError(f"refused to load global '{module}.{name}': not on the checkpoint allow-list")


class _DataUnpickler(_StateCheckingUnpickler):
    """For pickled numpy data files: arrays, dtypes, scalars and plain containers; nothing else."""

    buildable = (collections.OrderedDict, np.ndarray, np.dtype)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DATA_ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return getattr(__import__(module, fromlist=[name]), name)
        raise UnsafeCheckpointError(f"refused to load global '{module}.{name}': a data file holds only arrays")


_DATA_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    *((m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar")),
}


def load_pickled_npy(path: str | os.PathLike) -> Any:
    """The object in a `.npy` file of an object array (e.g. BOLD5000's `img_dict.npy`), read without running code.

    `np.load(allow_pickle=True)` would execute whatever the pickle asks; here only numpy arrays, dtypes,
    scalars and plain containers are rebuilt. A 0-d object array gives its single element.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0  # fmt: skip
            shape, fortran, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            array = _DataUnpickler(f).load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except (ValueError, pickle.UnpicklingError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable .npy file (truncated or corrupt?): {e}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise CheckpointError(f"{path}: the pickled object is not the {shape} array its header announces")
    return array.item() if array.shape == () else array


# torch.load's zip format needs only `Unpickler` of the module-like object it is given.
_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, __name__="restricted_pickle")


ZIP_MAGIC = b"PK\x03\x04"  # what torch.load takes for its zip format (anything else goes to its legacy loader)


def _check_format(f: Any) -> None:
    """Refuse, before torch reads `f`, a file torch would not unpickle with our unpickler (the module docstring)."""
    head = f.read(262)
    f.seek(0)
    if not head.startswith(ZIP_MAGIC):
        if head[:1] == b"\x80" or head[257:262] == b"ustar":  # a pickle's PROTO opcode; a tar header
            raise UnsafeCheckpointError(
                "refused: a raw pickle or torch's legacy (pre-1.6) format, which torch reads with unpickling "
                "steps of its own; re-save it with torch >= 1.6 (torch.save writes the zip format) where you trust it"
            )
        raise CheckpointError("not a readable torch checkpoint (truncated or corrupt?): not a zip archive")
    try:
        records = torch._C.PyTorchFileReader(f).get_all_records()  # the reader torch.load uses
    except RuntimeError as e:
        raise CheckpointError(f"not a readable torch checkpoint (truncated or corrupt?): {e}") from None
    finally:
        f.seek(0)
    if any(r.rsplit("/", 1)[-1] == "constants.pkl" or r.startswith("code/") for r in records):
        raise UnsafeCheckpointError("refused: a TorchScript archive (torch.load would run its code through "
                                    "torch.jit.load); a checkpoint holds weights and data only")  # fmt: skip


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a torch checkpoint without executing code from it; published config objects become PickledObject."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:  # checked and loaded through one open file
            _check_format(f)
            return torch.load(f, map_location=map_location, pickle_module=_restricted_pickle, weights_only=False)
    except (UnsafeCheckpointError, CheckpointError) as e:
        raise type(e)(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {e}") from e


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save atomically: a temporary file in the same folder, then a rename.

    The file gets the permissions of any new file (0666 less the umask), so a shared results folder stays
    readable; a temporary file left by a save that was killed is removed by the next save to the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # what mkstemp below names them
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise CheckpointError naming the tensors of a state dict that hold NaN or inf values."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]  # fmt: skip
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(f"{path}: weights hold NaN or inf values in {bad[:3]}{more}; the file is damaged or "
                              "comes from a diverged run")  # fmt: skip


def as_config_dict(config: Any) -> dict:
    """A checkpoint's `config` entry (a dict, or a published config object as PickledObject) as a plain dict."""
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, PickledObject) or type(config).__module__ == "config":  # a published config object
        return {k: v for k, v in vars(config).items() if not k.startswith("_")}
    raise CheckpointError(f"unexpected config entry of type {type(config).__name__}")


# ---- RNG state --------------------------------------------------------------------------------------------------
# Stored as tensors and plain numbers: a numpy array would pickle numpy 2's `numpy._core` path, which numpy 1
# (the original code's environment) cannot unpickle.


def get_rng_state() -> dict:
    """Every RNG a training run draws from (Python, numpy, torch CPU and, when present, CUDA)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the RNG states captured by `get_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        keys = numpy["keys"].numpy().astype(np.uint32)
        np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    else:  # an ndarray tuple, as checkpoints of earlier versions stored it
        np.random.set_state(_as_tuple(numpy))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    # pickle returns the nested tuples as saved; lists appear only if a state passed through JSON/YAML.
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
