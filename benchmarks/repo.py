"""Where the benchmarks find things: the repository root and the results folder; importing it puts code/ on the path.

Scripts run as `python benchmarks/<script>.py`, so our modules (code/) are not importable until this module has
run; it imports nothing heavy, so table.py can use it without torch.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "code") not in sys.path:  # scripts run as `python benchmarks/bench_*.py`
    sys.path.insert(0, str(ROOT / "code"))

RESULTS_DIR = ROOT / "benchmarks" / "results"
