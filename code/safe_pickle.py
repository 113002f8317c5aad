"""Reading pickles without running code from them: the unpicklers behind every checkpoint and pickled data file.

The published MinD-Vis `.pth` files pickle objects of the original code's classes (`config.Config_MBM_fMRI`,
`config.Config_MBM_finetune`, `config.Config_Generative_Model`, sometimes a pytorch_lightning logger).
`torch.load(weights_only=True)` refuses them and a plain `torch.load` would run whatever a malicious file asks
for. `restricted_pickle` (the `pickle_module` `checkpoint.load_checkpoint` hands torch) unpickles with an
allow-list instead: tensors, numpy arrays and scalars, containers and primitive types; the three config classes
come back as our data-only classes of the same names (`published_configs`; attributes only, no code of the file's
runs), other config and logger classes as inert `PickledObject`s; any other global is refused with an error
naming it. The unpickler's BUILD (setting an object's state) reaches only these data objects, never a function
or a class: on an allowed function it would be a setattr shared by the whole process (e.g. the defaults of
torch's tensor rebuild). torch's tensor rebuilds are checked: no backward hooks, no special attributes.

`load_pickled_npy` reads a `.npy` file of an object array (BOLD5000's `img_dict.npy`) the same way, with an
allow-list of numpy data only.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

import published_configs
from errors import CheckpointError, UnsafeCheckpointError
from published_configs import pickled_attributes


class PickledObject(types.SimpleNamespace):
    """Inert stand-in for a pickled object of a class we do not import (e.g. `config.Config_MBM_fMRI`)."""

    _pickled_class: str = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(pickled_attributes(state, self._pickled_class))

    def to_dict(self) -> dict:
        """The object's attributes as a plain dict."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _stand_in(module: str, name: str) -> type:
    return type(name, (PickledObject,), {"_pickled_class": f"{module}.{name}", "__module__": "safe_pickle"})


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
# The original's config classes, rebuilt as our data-only classes of the same names (published_configs), which
# pickle back under those names; other classes whose instances carry only data come back as PickledObject stand-ins.
_PUBLISHED_CONFIGS = {cls.__name__: cls for cls in published_configs.PUBLISHED_CLASSES}
_STAND_IN_MODULES = ("config", "pytorch_lightning.loggers", "lightning.pytorch.loggers")


class _StateCheckingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, whose BUILD is refused unless the object built is an instance of `buildable`.

    BUILD calls the object's `__setstate__` or sets its attributes; the object below the state on the stack may be
    any value the pickle made, an allowed function or class included. The C unpickler has no hook per opcode, hence
    the Python one. The pickle holds the structure, not the tensor data (separate zip records), so the slower
    unpickler costs little (benchmarks/README.md, "Loading checkpoints").
    """

    buildable: tuple[type, ...] = ()
    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        target = self.stack[-2] if len(self.stack) > 1 else None
        if not isinstance(target, self.buildable):
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafeCheckpointError(
                f"refused to set the state of {what!r} ({type(target).__name__}): only "
                "data objects may be rebuilt from a file"
            )
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def _no_hooks(hooks: Any) -> None:
    if hooks:  # torch writes an empty OrderedDict; anything else would attach callables to the tensor
        raise UnsafeCheckpointError("refused a tensor with backward hooks: a file stores no callables")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, collections.OrderedDict(), metadata
    )


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
    buildable = (PickledObject, *published_configs.PUBLISHED_CLASSES, collections.OrderedDict, np.ndarray, np.dtype)

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _REBUILDS:
            return _REBUILDS[name]
        if (module, name) in _ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "config" and name in _PUBLISHED_CONFIGS:  # data-only classes of ours (published_configs)
            return _PUBLISHED_CONFIGS[name]
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
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
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


# torch.load's zip format needs only `Unpickler` of the module-like object it is given (its `pickle_module`).
restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, __name__="restricted_pickle")
