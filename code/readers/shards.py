"""WebDataset samples read without running code: `.tar` shards (streamed) or the same samples extracted to a folder.

A WebDataset sample is the group of consecutive files sharing a key, the file name up to the first dot of its
last component (`sample000000349.nsdgeneral.npy` -> key `sample000000349`, member `nsdgeneral.npy`). Members are
handed over as bytes and decoded only by the reader that asks (`npy_member`, `image_member`): arrays with
`allow_pickle=False` after their header was checked against their size, images through PIL with a pixel limit.
Shards are read with the standard library's `tarfile` in stream mode, one member at a time, never extracted;
anything but a regular file in a shard (a link, a device, a folder) is refused, as is a shard cut short.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from errors import one_line
from readers.files import DataFormatError, check_npy_header

MAX_PIXELS = 4096 * 4096  # stimuli and reconstructions are a few hundred pixels a side; a file can claim far more
MAX_MEMBER_BYTES = 1 << 30  # one sample's member; NSD's largest (a subject's voxels, 3 repeats) is ~0.2 MB


def _split(name: str) -> tuple[str, str]:
    """(key, member) of a file name in a sample: the key keeps any folder, the member is what follows the first
    dot of the last component."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext if dot else ""


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) for every sample of a `.tar` shard (plain or compressed), in shard order."""
    key, sample, end = None, {}, 0
    try:
        with tarfile.open(path, mode="r|*") as shard:  # stream mode: members are read in order, once
            for info in shard:
                end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if info.isdir():
                    continue
                if not info.isfile():
                    what = "link" if info.issym() or info.islnk() else "special file"
                    raise DataFormatError(f"{path}: member {info.name!r} is a {what}, not a file; a shard holds files")
                if info.size > MAX_MEMBER_BYTES:
                    raise DataFormatError(f"{path}: member {info.name!r} declares {info.size:,} bytes, too many")
                k, member = _split(info.name)
                if k != key:
                    if key is not None:
                        yield key, sample
                    key, sample = k, {}
                if member in sample:
                    raise DataFormatError(f"{path}: sample {k!r} holds {member!r} twice")
                data = shard.extractfile(info).read()
                if len(data) != info.size:
                    raise DataFormatError(f"{path}: member {info.name!r} is cut short (truncated shard?)")
                sample[member] = data
        _check_end(path, end)
    except DataFormatError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataFormatError(f"{path}: not a readable .tar shard (truncated or corrupt?): {one_line(e)}") from None
    if key is not None:
        yield key, sample


COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz


def _check_end(path: Path, end: int) -> None:
    """An uncompressed shard must end its last member with the end-of-archive marker (two zero blocks): tarfile
    takes a shard cut between two members for a shorter, complete one."""
    with open(path, "rb") as f:
        if f.read(6).startswith(COMPRESSED):
            return  # the decompressor notices a cut-off stream itself
        f.seek(end)
        marker = f.read(2 * tarfile.BLOCKSIZE)
    if len(marker) < 2 * tarfile.BLOCKSIZE or any(marker):
        raise DataFormatError(f"{path}: the shard ends without tar's end-of-archive marker (truncated?)")


def folder_samples(folder: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) for the samples of an extracted shard: the regular files of `folder`, keys sorted."""
    files: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix == ".tar" or path.is_dir():
            continue
        if path.is_symlink() or not path.is_file():
            raise DataFormatError(f"{path}: a link or special file, not a sample's file")
        key, member = _split(path.name)
        files.setdefault(key, {})[member] = path
    for key in sorted(files):
        sample = {}
        for member, path in files[key].items():
            if path.stat().st_size > MAX_MEMBER_BYTES:
                raise DataFormatError(f"{path}: {path.stat().st_size:,} bytes, too many for one sample's file")
            sample[member] = path.read_bytes()
        yield str(folder / key), sample


def member(sample: dict[str, bytes], name: str, source: str) -> bytes:
    """The bytes of member `name` (e.g. 'nsdgeneral.npy'); DataFormatError naming the sample and what it holds."""
    if name not in sample:
        raise DataFormatError(f"{source}: sample has no {name!r} (it holds {sorted(sample)})")
    return sample[name]


def npy_member(sample: dict[str, bytes], name: str, source: str) -> np.ndarray:
    """The array of a `.npy` member, never a pickle; its header is checked against its size first."""
    data = member(sample, name, source)
    f = io.BytesIO(data)
    try:
        check_npy_header(f, len(data))
        f.seek(0)
        return np.load(f, allow_pickle=False)
    except DataFormatError as e:
        raise DataFormatError(f"{source}: member {name!r} {e}") from None
    except Exception as e:
        raise DataFormatError(f"{source}: member {name!r} is not a readable .npy array: {one_line(e)}") from None


IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")


def image_member(sample: dict[str, bytes], source: str, max_size: int | None = None) -> np.ndarray:
    """The sample's image (its first member of `IMAGE_MEMBERS`) as uint8 (H, W, 3), resized to max_size a side
    when it is larger (`shrink`)."""
    name = next((m for m in IMAGE_MEMBERS if m in sample), None)
    if name is None:
        raise DataFormatError(f"{source}: sample has no image ({'/'.join(IMAGE_MEMBERS)}; it holds {sorted(sample)})")
    image = decode_image(sample[name], f"{source}: member {name!r}")
    return shrink(image, max_size) if max_size else image


def decode_image(data: bytes | Path, source: str) -> np.ndarray:
    """An encoded image (bytes or a file) as uint8 (H, W, 3); its pixel count is read before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DataFormatError(
                    f"{source}: {img.width}x{img.height} pixels, more than {MAX_PIXELS:,} (4096x4096)"
                )
            return np.asarray(img.convert("RGB"))
    except DataFormatError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataFormatError(f"{source}: not a readable image ({one_line(e)})") from None


def shrink(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 image(s) (..., H, W, 3) larger than `size` a side resized to size x size (PIL bicubic); others as
    they are."""
    if max(images.shape[-3:-1]) <= size:
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    out = [np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)) for img in flat]
    return np.stack(out).reshape(*images.shape[:-3], size, size, 3)


SHARD_NUMBER = re.compile(r"(\d+)(?=\.tar$)")


def shard_order(path: Path) -> tuple[int, str]:
    """Shards in numeric order (`train_subj01_2.tar` before `train_subj01_10.tar`)."""
    m = SHARD_NUMBER.search(path.name)
    return (int(m.group(1)) if m else -1, path.name)
