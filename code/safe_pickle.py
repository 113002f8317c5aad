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

Allowed is not enough where the value's own constructor trusts its input. numpy's `dtype.__setstate__` does not
check field offsets or flags (a field 10^9 bytes into a 16-byte item reads or writes out of bounds; an object flag
on raw bytes makes them pointers), and `ndarray.__setstate__` does not check an object array's list against its
shape; so a dtype from a file is a plain one (no fields, subarrays, metadata; its size, alignment and flags those
numpy gives its type string), always a copy, and an array's state is checked against its shape before numpy sees
it. Tensors may not claim more elements than their storage holds (zero strides over one value). What a pickle may
build is bounded: `MAX_MADE` objects (time and memory of a small file stay small), and the result is checked by
`bounded.check_tree` (depth, cycles, expanded size).
"""

from __future__ import annotations

import codecs
import collections
import copyreg
import math
import os
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

import published_configs
from bounded import TooLarge, check_tree, npy_header, short_repr
from errors import CheckpointError, UnsafeCheckpointError, one_line
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


# ---- numpy values, checked before numpy trusts them (the module docstring) ----------------------------------------


def _refuse(what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"refused {what}")


def _check_dtype(dtype: Any) -> np.dtype:
    """`dtype` if it is a plain numpy dtype, exactly as numpy builds it from its type string; refused otherwise."""
    if not isinstance(dtype, np.dtype):
        raise _refuse(f"a numpy array or scalar whose dtype is {short_repr(dtype)}")
    plain = dtype.fields is None and dtype.subdtype is None and dtype.metadata is None
    if plain:
        ref = np.dtype(dtype.str)
        same = (type(dtype), dtype.itemsize, dtype.alignment, dtype.flags, dtype.byteorder, dtype.char)
        plain = same == (type(ref), ref.itemsize, ref.alignment, ref.flags, ref.byteorder, ref.char)
    if not plain:
        raise _refuse(
            f"a numpy dtype {dtype.str!r} with fields, subarrays, metadata or another size or flags than numpy gives "
            "it: a file's arrays have plain dtypes (numpy does not check the rest)"
        )
    return dtype


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """numpy.dtype as a pickle calls it (`dtype('f4', False, True)`), from a type string only, always a copy: a BUILD
    then changes this copy, never numpy's shared dtype of that type."""
    if not isinstance(spec, str) or not isinstance(align, bool):
        raise _refuse(f"numpy.dtype{short_repr((spec, align, copy))}: a file's dtypes are type strings")
    return _check_dtype(np.dtype(spec, align=align, copy=True))


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's `_reconstruct` as its pickles call it: an empty ndarray whose state a BUILD then sets."""
    if subtype is not np.ndarray or not (isinstance(shape, tuple | list) and list(shape) == [0]):
        raise _refuse(f"numpy _reconstruct{short_repr((subtype, shape))}: numpy pickles an empty ndarray here")
    return np.ndarray((0,), np.int8)


def _check_array_state(state: Any) -> None:
    """An ndarray's pickled state (version, shape, dtype, fortran, data) whose data holds exactly what it claims."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _refuse(f"an ndarray state {short_repr(state)}")
    shape, dtype, fortran, data = state[-4:]
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape) and len(shape) <= 32):
        raise _refuse(f"an ndarray of shape {short_repr(shape)}")
    count = math.prod(shape)
    if _check_dtype(dtype).hasobject:
        ok = isinstance(data, list) and len(data) == count
    else:
        ok = isinstance(data, bytes | bytearray) and len(data) == count * dtype.itemsize
    if not ok or not isinstance(fortran, bool):
        raise _refuse(
            f"an ndarray whose data ({type(data).__name__} of {len(data) if hasattr(data, '__len__') else '?'}) is "
            f"not the {count} values of {dtype} its shape {shape} declares"
        )


def _scalar(dtype: Any, data: Any) -> Any:
    """numpy's `scalar` as its pickles call it: a value of a plain dtype from exactly its bytes."""
    if not (isinstance(data, bytes) and len(data) == _check_dtype(dtype).itemsize):
        raise _refuse(f"a numpy scalar of {dtype} from {short_repr(data)}")
    return np.frombuffer(data, dtype)[0]


def _encode(text: Any, encoding: Any) -> bytes:
    """`_codecs.encode` as protocol-2 pickles store bytes: latin-1 text to bytes."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _refuse(f"_codecs.encode{short_repr((text, encoding))}: pickles store bytes as latin-1 text")
    return codecs.encode(text, "latin1")


def _reconstructor(cls: type, base: Any, state: Any) -> Any:
    """copyreg's `_reconstructor` as protocol 0/1 pickles call it for plain objects: `object.__new__(cls)`."""
    if base is not object or state is not None:
        raise _refuse(f"copyreg._reconstructor{short_repr((cls, base, state))}: only plain objects are rebuilt so")
    return copyreg._reconstructor(cls, base, state)


# ---- keys and set members: hashing a tuple walks it whole, every time, so a tuple nested 40 levels deep, each
# level holding the one below twice, takes 2^40 steps to hash (1.3 KB of pickle). Keys are plain values or flat
# tuples of them, checked before they are hashed.

_KEY_TYPES = (str, bytes, int, float, complex, type(None), torch.dtype, np.generic)


def _check_keys(keys: Any) -> None:
    for key in keys:
        if not (
            isinstance(key, _KEY_TYPES) or (isinstance(key, tuple) and all(isinstance(k, _KEY_TYPES) for k in key))
        ):
            raise _refuse(f"a dict key or set member {short_repr(key)}: a file's keys are plain values")


def _set(items: Any = ()) -> set:
    items = list(items)
    _check_keys(items)
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _ordered_dict(items: Any = ()) -> collections.OrderedDict:
    pairs = list(items.items() if isinstance(items, dict) else items)
    _check_keys(k for k, _ in pairs)
    return collections.OrderedDict(pairs)


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_CORE},
    **{(m, "scalar"): _scalar for m in _NUMPY_CORE},
    ("_codecs", "encode"): _encode,  # protocol-2 pickles store bytes (numpy buffers) this way
    ("collections", "OrderedDict"): _ordered_dict,
}
_ALLOWED = {
    **_NUMPY,
    ("builtins", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
# The original's config classes, rebuilt as our data-only classes of the same names (published_configs), which
# pickle back under those names; other classes whose instances carry only data come back as PickledObject stand-ins.
_PUBLISHED_CONFIGS = {cls.__name__: cls for cls in published_configs.PUBLISHED_CLASSES}
_STAND_IN_MODULES = ("config", "pytorch_lightning.loggers", "lightning.pytorch.loggers")


# What a pickle may make: every opcode that creates a value (or a memo entry) counts, sets and dicts (the largest
# empty values) more. The full-size LDM's 1,212 tensors with AdamW state for each make 1.4 x 10^5 (a 450 KB
# data.pkl); the bound keeps any 1 MB pickle under a second and 100 MB (benchmarks/README.md, "Loading checkpoints").
MAX_MADE = 500_000
_FREE = {pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.STOP, pickle.PROTO, pickle.FRAME}  # MARK grows a stack
_LARGE = {pickle.EMPTY_SET, pickle.FROZENSET, pickle.EMPTY_DICT, pickle.DICT}


def _counted(load: Any, cost: int) -> Any:
    def counted(self: _StateCheckingUnpickler) -> None:
        self.made += cost
        if self.made > MAX_MADE:
            raise UnsafeCheckpointError(
                f"refused: the pickle builds more than {MAX_MADE:,} values, far more than any file of ours"
            )
        load(self)

    return counted


class _StateCheckingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, with BUILD refused unless the object built is an instance of `buildable` (numpy
    values checked), what it makes counted (`MAX_MADE`) and its result checked by `check_tree`.

    BUILD calls the object's `__setstate__` or sets its attributes; the object below the state on the stack may be
    any value the pickle made, an allowed function or class included. The C unpickler has no hook per opcode, hence
    the Python one. The pickle holds the structure, not the tensor data (separate zip records), so the slower
    unpickler costs little (benchmarks/README.md, "Loading checkpoints").
    """

    buildable: tuple[type, ...] = ()
    dispatch = {
        op: load if bytes([op]) in _FREE else _counted(load, 4 if bytes([op]) in _LARGE else 1)
        for op, load in pickle._Unpickler.dispatch.items()
    }
    made = 0

    def load(self) -> Any:
        value = super().load()
        try:
            check_tree(value)
        except TooLarge as e:
            raise UnsafeCheckpointError(f"refused: {e}") from None
        return value

    def load_build(self) -> None:
        target, state = self.stack[-2:] if len(self.stack) > 1 else (None, None)
        if not isinstance(target, self.buildable):
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafeCheckpointError(
                f"refused to set the state of {short_repr(what)} ({type(target).__name__}): only "
                "data objects may be rebuilt from a file"
            )
        if isinstance(target, np.ndarray):
            _check_array_state(state)
        pickle._Unpickler.load_build(self)
        if isinstance(target, np.dtype):
            _check_dtype(target)

    dispatch[pickle.BUILD[0]] = _counted(load_build, 1)

    # the keys (or members) these opcodes hash: on the stack above the mark, or below the value (SETITEM)
    def _keys_checked(load: Any, keys: Any) -> Any:
        def checked(self: _StateCheckingUnpickler) -> None:
            _check_keys(keys(self))
            load(self)

        return checked

    for _op, _keys in (
        (pickle.SETITEM, lambda self: self.stack[-2:-1]),
        (pickle.SETITEMS, lambda self: self.stack[::2]),
        (pickle.DICT, lambda self: self.stack[::2]),
        (pickle.ADDITEMS, lambda self: self.stack),
        (pickle.FROZENSET, lambda self: self.stack),
    ):
        dispatch[_op[0]] = _keys_checked(dispatch[_op[0]], _keys)
    del _op, _keys


def _no_hooks(hooks: Any) -> None:
    if hooks:  # torch writes an empty OrderedDict; anything else would attach callables to the tensor
        raise UnsafeCheckpointError("refused a tensor with backward hooks: a file stores no callables")


def _within_storage(tensor: torch.Tensor) -> torch.Tensor:
    # torch checks that the view stays inside its storage, not that it does not repeat it: zero strides make a
    # tensor of 10^9 elements from one value, which the finiteness check (and any use) would then expand
    stored = tensor.untyped_storage().nbytes() // tensor.element_size()
    if tensor.numel() > max(stored, 1):
        raise UnsafeCheckpointError(
            f"refused a tensor of {tensor.numel():,} elements over a storage of {stored:,} (repeated by its "
            "strides); torch.save writes each tensor's own values"
        )
    return tensor


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _within_storage(torch._utils._rebuild_tensor(storage, storage_offset, size, stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _no_hooks(backward_hooks)
    tensor = torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, collections.OrderedDict(), metadata
    )
    return _within_storage(tensor)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _no_hooks(backward_hooks)
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    _no_hooks(backward_hooks)
    names = [k for part in (state if isinstance(state, tuple) else (state,)) for k in (part or {})]
    if not all(isinstance(k, str) and not k.startswith("__") for k in names):
        raise UnsafeCheckpointError(f"refused a parameter whose state sets {short_repr(names)}")
    return torch._utils._rebuild_parameter_with_state(data, requires_grad, collections.OrderedDict(), state)


# torch's tensor rebuilds, checked: no hooks, no special attributes, no more elements than stored
_REBUILDS = {
    f.__name__: f for f in (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state)
}


class _RestrictedUnpickler(_StateCheckingUnpickler):
    buildable = (PickledObject, *published_configs.PUBLISHED_CLASSES, collections.OrderedDict, np.ndarray, np.dtype)

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # what protocol 2 writes for Python 3's builtins
        if module == "torch._utils" and name in _REBUILDS:
            return _REBUILDS[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "config" and name in _PUBLISHED_CONFIGS:  # data-only classes of ours (published_configs)
            return _PUBLISHED_CONFIGS[name]
        if any(module == m or module.startswith(m + ".") for m in _STAND_IN_MODULES):
            return _stand_in(module, name)
        raise UnsafeCheckpointError(
            f"refused to load global {short_repr(f'{module}.{name}')}: not on the checkpoint allow-list"
        )


class _DataUnpickler(_StateCheckingUnpickler):
    """For pickled numpy data files: arrays, dtypes, scalars and plain containers; nothing else."""

    buildable = (collections.OrderedDict, np.ndarray, np.dtype)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY:
            return _NUMPY[module, name]
        raise UnsafeCheckpointError(
            f"refused to load global {short_repr(f'{module}.{name}')}: a data file holds only arrays"
        )


def load_pickled_npy(path: str | os.PathLike) -> Any:
    """The object in a `.npy` file of an object array (e.g. BOLD5000's `img_dict.npy`), read without running code.

    `np.load(allow_pickle=True)` would execute whatever the pickle asks; here only numpy arrays, dtypes,
    scalars and plain containers are rebuilt. A 0-d object array gives its single element.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, _, dtype = npy_header(f, os.fstat(f.fileno()).st_size)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            array = _DataUnpickler(f).load()
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise CheckpointError(f"file not found: {path}") from None
    except Exception as e:  # whatever a damaged file makes numpy or the unpickler raise: one line naming it
        raise CheckpointError(f"{path}: not a readable .npy file (truncated or corrupt?): {one_line(e)}") from None
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise CheckpointError(f"{path}: the pickled object is not the {shape} array its header announces")
    return array.item() if array.shape == () else array


# torch.load's zip format needs only `Unpickler` of the module-like object it is given (its `pickle_module`).
restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, __name__="restricted_pickle")
