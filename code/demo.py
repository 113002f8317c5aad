"""`make demo`: the whole method on the simulated brain, on a laptop CPU.

    python code/demo.py                 # data/synthetic/demo, results/demo
    python code/demo.py --size tiny     # the same pipeline at test size, in about a minute

Each step is cached: a second run reuses what is done. The simulated data go into their own
folder (`data/synthetic/<size>`), never over real data in `data/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from dataset import create_bold5000_dataset, create_god_dataset, create_hcp_dataset
from make_synthetic_data import MARKER, make_synthetic_data

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mindvis.demo")


def simulate(data_dir: Path, size: str, seed: int) -> Path:
    """Simulate the data set once; later runs reuse it (the simulator marks a finished set in simulation.json)."""
    marker = data_dir / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("complete") and info.get("size") == size and info.get("seed") == seed:
            log.info("[data] reusing simulated %s data in %s", size, data_dir)
            return data_dir
    log.info("[data] simulating the %s data set in %s ...", size, data_dir)
    make_synthetic_data(data_dir, size=size, seed=seed, overwrite=True)
    return data_dir


def describe(data_dir: Path) -> None:
    """Read the simulated data through the real readers and log what they hold."""
    hcp = create_hcp_dataset(data_dir / "HCP" / "npz", include_kam=True, kam_path=data_dir / "Kamitani" / "npz")
    log.info("[data] HCP + GOD pre-training set: %d samples x %d voxels", len(hcp), hcp.num_voxels)
    train, test = create_god_dataset(data_dir / "Kamitani" / "npz", subjects=["sbj_3"])
    log.info("[data] GOD sbj_3: %d training pairs, %d test images, %d voxels, %d + %d categories",
             len(train), len(test), train.num_voxels, len(set(train.item_labels())), len(set(test.item_labels())))
    train, test = create_bold5000_dataset(data_dir / "BOLD5000", subjects=["CSI1"])
    log.info("[data] BOLD5000 CSI1: %d training pairs, %d test images, %d voxels",
             len(train), len(test), train.num_voxels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "demo"), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", type=Path, default=None, help="default data/synthetic/<size>")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.time()
    data_dir = simulate(args.data_dir or ROOT / "data" / "synthetic" / args.size, args.size, args.seed)
    describe(data_dir)
    log.info("demo finished in %.0f s", time.time() - start)


if __name__ == "__main__":
    main()
