"""Print the Markdown results table of benchmarks/README.md from the JSON files the scripts wrote.

    python benchmarks/table.py                      # every benchmarks/results/*.json (not the --tiny ones)
    python benchmarks/table.py results/a.json ...   # chosen files
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _throughput(record: dict, name: str) -> float:
    return next(v["items_per_s"] for v in record["variants"] if v["name"] == name)


def _ours(record: dict) -> dict:
    return next(v for v in reversed(record["variants"]) if v["name"] == record["ours"])


def rows(path: Path) -> list[str]:
    """One table row per workload of one JSON file, plus the GOD protocol for the generation benchmark."""
    run = json.loads(path.read_text())
    device = run["device"]["name"] + (f" ({run['device']['threads']} threads)" if "threads" in run["device"] else "")
    commit = run["commit"][:7] + ("-dirty" if run["commit"].endswith("-dirty") else "")
    context = f"{device} | {run['mode']} | {run['date'][:10]} | `{commit}`"
    out = []
    for w in run["workloads"]:
        ours = _ours(w)
        frac = ours.get("fraction_of_peak")
        out.append(
            f"| {w['name']} | {context} | {_throughput(w, w['original']):.4g} | {ours['items_per_s']:.4g} | "
            f"**{w['ratio']:.2f}x** | {w['ours']} | {ours.get('achieved_flops', 0) / 1e9:.4g} | "
            f"{'' if frac is None else f'{100 * frac:.0f}%'} | {ours['peak_memory_bytes'] / 2**20:.0f} |"
        )
    protocol = run.get("protocol")
    if protocol:
        s = protocol["protocol_s"]
        out.append(
            f"| GOD protocol (250 images x {protocol['unet_calls_per_image']} UNet calls, composed) | {context} | "
            f"{protocol['images_per_s']['original']:.3g} | {protocol['images_per_s']['ours']:.3g} | "
            f"**{protocol['ratio']:.2f}x** | {s['original'] / 3600:.3g} h -> {s['ours'] / 3600:.3g} h | | | |"
        )
    return out


def main(argv: list[str]) -> None:
    paths = [Path(a) for a in argv] or sorted(p for p in RESULTS.glob("*.json") if not p.stem.endswith("-tiny"))
    print("| workload | device | mode | date | commit | original items/s | ours items/s | ours / original | "
          "ours | GFLOP/s | % of peak | peak MiB |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        print("\n".join(rows(path)))


if __name__ == "__main__":
    main(sys.argv[1:])
