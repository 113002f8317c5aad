"""Safe loading and atomic saving of checkpoints, and the RNG state they carry.

Every read goes through `load_checkpoint`: before torch sees a file, what torch would not read through our
restricted unpickler (`safe_pickle`) is refused: TorchScript archives (torch.load hands them to torch.jit.load,
whose `__setstate__` code can write files) and the legacy pre-1.6 and raw-pickle formats (read by torch's legacy
loader, which has unpickling steps of its own); the rest is unpickled with the allow-list of `safe_pickle`.
Published config objects come back as the data-only classes of `published_configs`.

Every stage loads through `load_checkpoint` and writes through `save_checkpoint`.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomic import atomic_write
from bounded import short_repr
from errors import CheckpointError, UnsafeCheckpointError, one_line
from safe_pickle import PickledObject, restricted_pickle

ZIP_MAGIC = b"PK\x03\x04"  # what torch.load takes for its zip format (anything else goes to its legacy loader)
# data.pkl holds a checkpoint's structure (about 100 bytes a tensor; the values are records of their own): a Stage B
# checkpoint's is about 1 MB. The bound keeps the pure-Python unpickler's time on any file to seconds.
MAX_PICKLE_BYTES = 32 * 2**20


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
        raise UnsafeCheckpointError(
            "refused: a TorchScript archive (torch.load would run its code through "
            "torch.jit.load); a checkpoint holds weights and data only"
        )
    try:
        with zipfile.ZipFile(f) as archive:  # leaves `f` open
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"not a readable torch checkpoint (truncated or corrupt?): {e}") from None
    finally:
        f.seek(0)
    compressed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise UnsafeCheckpointError(
            f"refused: compressed records ({short_repr(compressed)}); torch.save stores them uncompressed, and a "
            "compressed record can expand a thousandfold"
        )
    structure = max((i.file_size for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"), default=0)
    if structure > MAX_PICKLE_BYTES:
        raise UnsafeCheckpointError(
            f"refused: its pickled structure (data.pkl) is {structure:,} bytes; a checkpoint's is far smaller than "
            f"{MAX_PICKLE_BYTES:,} (the tensors' values are records of their own)"
        )


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a torch checkpoint without executing code from it; published config objects become PickledObject."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:  # checked and loaded through one open file
            _check_format(f)
            return torch.load(f, map_location=map_location, pickle_module=restricted_pickle, weights_only=False)
    except (UnsafeCheckpointError, CheckpointError) as e:
        raise type(e)(f"{path}: {e}") from None
    except Exception as e:  # whatever a damaged file makes torch or the unpickler raise: one line naming it
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {one_line(e)}") from e


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write `obj` with torch.save atomically and never through a link (`atomic.atomic_write`)."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise CheckpointError naming the tensors of a state dict that hold NaN or inf values.

    Each storage is checked once, whole, however many tensors view it (a file can reference one tensor 10^5
    times); a storage with a non-finite value names every tensor that views it.
    """
    if not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: a state dict's keys are parameter names, got {short_repr(list(state)[:3])}")
    bad, checked = [], {}
    for name, tensor in state.items():
        if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes(), tensor.dtype)
        if key not in checked:
            whole = torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(storage)  # (nbytes / size,)
            checked[key] = bool(torch.isfinite(whole).all())
        if not checked[key]:
            bad.append(name)
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointError(
            f"{path}: weights hold NaN or inf values in {bad[:3]}{more}; the file is damaged or "
            "comes from a diverged run"
        )


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
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
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
