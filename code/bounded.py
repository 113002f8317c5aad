"""Limits on what a file may make us build, and on what an error message may quote of it.

A pickle or YAML file of a kilobyte can describe a structure that is huge once walked: references to one list
ten times over, ten levels deep, print as 10^10 items (a YAML alias bomb; the same with pickle's memo), and a
list nested 100,000 deep makes any recursive code (repr, yaml, our own checks) fail with a RecursionError.
`check_tree` walks what a file gave once, sharing included, and refuses a structure deeper than `MAX_DEPTH` or
holding more than `MAX_VALUES` values when expanded (what printing or copying it would cost); every checkpoint,
pickled data file and YAML file we read goes through it. `short_repr` quotes a value in an error message at a
bounded length, so that the message of a refused value is one readable line whatever the value; `npy_header`
checks that a .npy file holds the data its header declares before numpy allocates it.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

MAX_DEPTH = 64  # our checkpoints and configs nest 3-8 levels; recursive code needs about 3 frames a level
MAX_VALUES = 1_000_000  # a full-size Stage B checkpoint with its optimiser holds about 2 x 10^4 values


class TooLarge(ValueError):
    """A file's structure nests deeper, or holds more values once expanded, than any file of this project."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 4
SHORT = 200


def short_repr(value: Any) -> str:
    """`repr(value)` cut to at most SHORT characters, for error messages that quote a value from a file."""
    text = _REPR.repr(value)
    return text if len(text) <= SHORT else text[: SHORT - 3] + "..."


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from value.keys()
        yield from value.values()
    elif isinstance(value, list | tuple | set | frozenset):
        yield from value
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            yield from value.ravel().tolist()
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from vars(value).values()


def check_tree(root: Any) -> None:
    """Raise TooLarge if `root` has a cycle, nests deeper than MAX_DEPTH or expands to more than MAX_VALUES values.

    One pass over the distinct objects (shared ones are expanded once, their size and depth counted wherever they
    are referenced), without recursion, so that the check itself cannot fail on what it checks.
    """
    depth: dict[int, int] = {}  # id -> levels below it and itself, once done
    size: dict[int, int] = {}  # id -> values in it when expanded, once done
    on_path: set[int] = set()  # ids of the value being expanded and its ancestors (all alive: reachable from root)
    stack: list[tuple[Any, list | None]] = [(root, None)]
    while stack:
        value, children = stack[-1]
        key = id(value)
        if children is None:  # first visit: expand, or a value done before (shared): its levels count here too
            if key in on_path:
                raise TooLarge("its data refers to itself (a cycle); a file of ours holds a tree of values")
            if len(on_path) + depth.get(key, 1) > MAX_DEPTH:
                raise TooLarge(f"its data nests deeper than {MAX_DEPTH} levels; a file of ours nests a few")
            if key in depth:
                stack.pop()
                continue
            on_path.add(key)
            children = list(_children(value))
            stack[-1] = (value, children)
            stack.extend((c, None) for c in children)
            continue
        stack.pop()  # all children done
        on_path.discard(key)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        size[key] = 1 + sum(size[id(c)] for c in children)
        if size[key] > MAX_VALUES:
            raise TooLarge(
                f"its data expands to more than {MAX_VALUES:,} values (shared references repeated); "
                "a file of ours holds far fewer"
            )


def read_yaml(path: str | Path) -> Any:
    """The YAML file `path` as plain values (yaml.safe_load), checked with `check_tree`; TooLarge or yaml.YAMLError."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except RecursionError:
        raise TooLarge(f"its data nests deeper than {MAX_DEPTH} levels; a file of ours nests a few") from None
    check_tree(data)
    return data


def npy_header(f: BinaryIO, nbytes: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The (shape, fortran order, dtype) of the .npy file open as `f` (at its start, `nbytes` long), checked to hold
    the data its header declares (ValueError otherwise), so that a header claiming 10^12 values is refused before
    numpy allocates them. Object arrays (a pickle follows) are checked by their unpickler instead."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except (ValueError, EOFError) as e:
        raise ValueError(f"has no readable .npy header ({' '.join(str(e).split())})") from None
    if not dtype.hasobject:
        declared, held = math.prod(shape) * dtype.itemsize, nbytes - f.tell()
        if declared != held:
            raise ValueError(
                f"has a header declaring {dtype} {shape} ({declared:,} bytes) but holds {held:,} bytes of data"
            )
    return shape, fortran, dtype
