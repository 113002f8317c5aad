"""Simulate a brain in the published HCP, GOD (Kamitani) and BOLD5000 layouts (the demo's data; see data/README.md).

    python code/make_synthetic_data.py --out data/synthetic/tiny --size tiny             # for tests
    python code/make_synthetic_data.py --out data/synthetic/demo --size demo --seed 0    # the `make demo` data

The simulator lives in the demo package (`code/demo/simulation/`); this script is its command line.
"""

from demo.simulation.simulate import main
from errors import run_main

if __name__ == "__main__":
    run_main(main)
