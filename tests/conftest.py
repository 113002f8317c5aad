"""Shared pytest set-up: `code/` on the import path, the reference-fixture folder, small helpers."""

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ROOT / "code"
if str(CODE) not in sys.path:
    sys.path.insert(0, str(CODE))

REFERENCE_DIR = Path(os.environ.get("MINDVIS_REFERENCE_DIR", ROOT / "tests" / "reference"))
# How close our outputs must come to the original's fixtures (relative error), as the fixtures' own README sets
# them (shipped with the fixtures, outside this repository: the original's code produced them)
FORWARD_TOL = 1e-4  # one forward pass
SAMPLER_TOL = 1e-3  # sampler outputs and decoded images


def load_fixture(name: str) -> tuple[dict, dict]:
    """Return (config, tensors) of the reference fixture `name` (e.g. 'mae_fmri')."""
    import torch

    config = json.loads((REFERENCE_DIR / f"{name}.json").read_text())
    tensors = torch.load(REFERENCE_DIR / f"{name}.pt", weights_only=True)
    return config, tensors


def rel_err(out, ref) -> float:
    """Relative error ||out - ref|| / ||ref|| in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.fixture
def reference_dir() -> Path:
    return REFERENCE_DIR


@pytest.fixture
def schemas() -> dict:
    return json.loads((REFERENCE_DIR / "checkpoint_schemas.json").read_text())
