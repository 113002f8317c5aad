"""How many of our files a reader crosses from Stage B's command line to its first optimiser step.

    python benchmarks/stage_b_path.py            # tiny simulated data, tiny random-weight models, CPU

Runs `stageB_ldm_finetune.main` on the tiny world until the first `optimizer.step()` and reports, of the
project's own files (`code/`):

- `called by the stage script`: the files holding a function or class that the stage script's own code (`main`,
  its step, its validation) calls directly: what a reader opens to follow the stage's story;
- `ran`: every file whose code ran on the way (the whole path, to the bottom of the model);
- `imported`: every file of ours that importing the stage script loads.

The numbers are a property of the code, not of the machine (benchmarks/README.md has them, before and after the
conditioner registry).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from torch.optim.optimizer import register_optimizer_step_pre_hook

import repo  # first: puts code/ on sys.path
from models import tiny_stage_b_world

CODE = repo.ROOT / "code"


class _FirstStep(Exception):
    """Raised by the optimiser's pre-step hook: the path ends here."""


def trace_stage_b(world: types.SimpleNamespace) -> dict[str, list[str]]:
    """Run Stage B to its first optimiser step; the files of ours the stage script calls, and all that ran."""
    import stageB_ldm_finetune
    from config import StageBConfig

    cfg = StageBConfig(
        root_path=str(world.root),
        output_path=str(world.root / "results"),
        kam_path=str(world.data / "Kamitani/npz"),
        pretrain_gm_path=str(world.ldm_dir),
        pretrain_mbm_path=str(world.stage_a),
        img_size=32,
        batch_size=8,
        num_epoch=1,
        num_val_items=3,
        num_samples=1,
        ddim_steps=4,
    )
    script = stageB_ldm_finetune.__file__
    called, ran = set(), set()

    def profile(frame, event, arg):
        if event != "call":
            return
        name = _ours(frame.f_code.co_filename)
        if name:
            ran.add(name)
            if frame.f_back is not None and frame.f_back.f_code.co_filename == script:
                called.add(name)

    def stop(optimizer, args, kwargs):
        raise _FirstStep

    handle = register_optimizer_step_pre_hook(stop)
    sys.setprofile(profile)
    try:
        stageB_ldm_finetune.main(cfg)
    except _FirstStep:
        pass
    else:
        raise RuntimeError("Stage B finished without an optimiser step")
    finally:
        sys.setprofile(None)
        handle.remove()
    called.add("stageB_ldm_finetune.py")
    return {"called by the stage script": sorted(called), "ran": sorted(ran), "imported": imported_by_stage_b()}


def imported_by_stage_b() -> list[str]:
    """Our files that `import stageB_ldm_finetune` loads, in a fresh interpreter."""
    probe = (
        "import sys, stageB_ldm_finetune\n"
        "print('\\n'.join(getattr(m, '__file__', None) or '' for m in sys.modules.values()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=CODE, capture_output=True, text=True, check=True)
    return sorted({name for line in out.stdout.splitlines() if (name := _ours(line))})


def _ours(filename: str | None) -> str | None:
    """`code/`-relative path of one of our files, or None."""
    if not filename:
        return None
    path = Path(filename).resolve()
    return str(path.relative_to(CODE)) if path.is_relative_to(CODE) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the lists here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = trace_stage_b(tiny_stage_b_world(Path(tmp)))
    for key, files in found.items():
        print(f"{key}: {len(files)} files")
        print("   " + " ".join(files))
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
