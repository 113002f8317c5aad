"""How long reading one NSD subject takes, and how much memory it needs, in each MindEye layout.

    python benchmarks/bench_nsd_reader.py                  # a quarter of subj01's trials (minutes, ~2 GB of disk)
    python benchmarks/bench_nsd_reader.py --scale 1        # subj01's size: 30,000 trials of 15,724 voxels

Writes one subject's files at NSD's dimensions times `--scale` (random betas and images: the reader's work does
not depend on the values) into a scratch folder, then reads them with `readers.nsd.create_nsd_dataset` in a fresh
process per layout and records the wall time and the process's peak resident memory (VmHWM, reset after the
imports; Linux). subj01 in MindEye2's release:
30,000 trials (750 per session, 40 sessions), 15,724 nsdgeneral voxels, 10,000 images of which the shared 1,000
are the test set; in MindEye's: 8,859 training and validation images and 982 test images, 3 presentations each.
Writes `benchmarks/results/bench_nsd_reader-cpu.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

import repo
import report
from errors import run_main

VOXELS, SESSIONS, PER_SESSION, SHARED, OWN = 15_724, 40, 750, 1_000, 9_000  # subj01's dimensions


def write_subject(root: Path, scale: float, seed: int = 0) -> dict[str, int]:
    """Both layouts of one subject (`subj01`) under root/mindeye1 and root/mindeye2, `scale` times NSD's size."""
    import h5py
    from PIL import Image

    rng = np.random.default_rng(seed)
    shared, own = round(SHARED * scale), round(OWN * scale)
    images = rng.choice(73_000, shared + own, replace=False)  # test images first
    shown = rng.permutation(np.repeat(np.arange(shared + own), 3))
    trials = len(shown)
    me2 = root / "mindeye2"
    (me2 / "wds" / "subj01").mkdir(parents=True)
    with h5py.File(me2 / "betas_all_subj01_fp32_renorm.hdf5", "w") as f:
        betas = f.create_dataset("betas", (trials, VOXELS), np.float32)
        for start in range(0, trials, 2048):
            betas[start : start + 2048] = rng.standard_normal((min(2048, trials - start), VOXELS), np.float32)
    with h5py.File(me2 / "coco_images_224_float16.hdf5", "w") as f:
        data = f.create_dataset("images", (73_000, 3, 224, 224), np.float16, chunks=(1, 3, 224, 224))
        for i in np.sort(images):
            data[i] = rng.random((3, 224, 224), np.float32).astype(np.float16)
    sessions = np.array_split(np.arange(trials), max(1, round(SESSIONS * scale)))
    for s, rows in enumerate(sessions):
        for part, keep in (("train", shown[rows] >= shared), ("new_test", shown[rows] < shared)):
            members = {}
            for t in rows[keep]:
                behav = np.full((1, 17), -1.0)
                behav[0, 0], behav[0, 5] = images[shown[t]], t
                members[f"sample{t:09d}.behav.npy"] = _npy(behav)
            _tar(me2 / "wds" / "subj01" / part / f"{s if part == 'train' else 0}.tar", members, append=part != "train")
    me1 = root / "mindeye1" / "webdataset_avg_split"
    with h5py.File(me2 / "betas_all_subj01_fp32_renorm.hdf5", "r") as f:
        betas = f["betas"]
        for split, picked in (("train", np.arange(shared, shared + own)), ("test", np.arange(shared))):
            members = {}
            for n, i in enumerate(picked):
                rows = np.sort(np.flatnonzero(shown == i))
                jpg = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (256, 256, 3), np.uint8)).save(jpg, format="JPEG", quality=90)
                members[f"sample{n:09d}.nsdgeneral.npy"] = _npy(betas[rows].astype(np.float16))
                members[f"sample{n:09d}.jpg"] = jpg.getvalue()
                members[f"sample{n:09d}.coco73k.npy"] = _npy(np.array([images[i]]))
            _tar(me1 / split / f"{split}_subj01_0.tar", members)
    return {"trials": trials, "images": shared + own, "voxels": VOXELS}


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def _tar(path: Path, members: dict[str, bytes], append: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "a" if append and path.exists() else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def read_once(folder: str) -> None:
    """(In a fresh process) read the subject and print wall seconds, peak RSS and the sets' sizes as JSON."""
    from readers.nsd import create_nsd_dataset

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (a forked child inherits its parent's)
    before = _status("VmRSS")  # the imports' own (torch's libraries)
    start = time.perf_counter()
    train, test = create_nsd_dataset(folder, subjects=["subj01"])
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    held = train.fmri.nbytes + test.fmri.nbytes + train.images.nbytes
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gib": peak / 2**30,
                "before_read_gib": before / 2**30,
                "held_gib": held / 2**30,
                "train_rows": len(train),
                "test_rows": len(test),
            }
        )
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=0.25, help="share of subj01's trials and images (default 0.25)")
    p.add_argument("--scratch", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    p.add_argument("--read", default=None, help=argparse.SUPPRESS)  # internal: the child process's folder
    args = p.parse_args(argv)
    if args.read:
        read_once(args.read)
        return Path(args.read)
    if not 0 < args.scale <= 1:
        p.error(f"--scale must be in (0, 1], got {args.scale}")
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        start = time.perf_counter()
        sizes = write_subject(Path(scratch), args.scale)
        print(f"wrote both layouts ({sizes}) in {time.perf_counter() - start:.0f} s")
        results = {}
        for layout in ("mindeye1", "mindeye2"):
            cmd = [sys.executable, __file__, "--read", str(Path(scratch) / layout)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[layout] = json.loads(out.strip().splitlines()[-1])
            print(layout, results[layout])
    record = {
        "script": "bench_nsd_reader",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": report.git_commit(),
        "scale": args.scale,
        **sizes,
        "results": results,
    }
    path = repo.RESULTS_DIR / "bench_nsd_reader-cpu.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_main(main)
