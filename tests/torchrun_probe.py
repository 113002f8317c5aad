"""Stage A1 under torchrun, instrumented for tests/test_stageA.py: each rank writes what it trained.

    PROBE_OUT=DIR torchrun --nproc_per_node=2 tests/torchrun_probe.py <Stage A1 flags>

writes DIR/rank<r>.json: a hash of the rank's final weights and the sample indices its sampler drew per epoch.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

import stageA1_mbm_pretrain as a1  # noqa: E402
from config import StageA1Config
from config_engine import parse_config  # noqa: E402


def main() -> None:
    drawn, trained = {}, []
    real = a1.train_one_epoch

    def recording(model, loader, *args, **kwargs):
        drawn[kwargs["epoch"]] = list(loader.sampler)
        trained[:] = [getattr(model, "module", model)]  # unwrapped from DistributedDataParallel
        return real(model, loader, *args, **kwargs)

    a1.train_one_epoch = recording
    a1.main(parse_config(StageA1Config))
    digest = hashlib.sha256()
    for name, tensor in sorted(trained[0].state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    out = Path(os.environ["PROBE_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    record = {"weights_sha256": digest.hexdigest(), "indices": drawn}
    (out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
