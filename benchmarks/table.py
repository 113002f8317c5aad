"""Print the Markdown tables of benchmarks/README.md from the JSON files the scripts wrote.

    python benchmarks/table.py                      # every benchmarks/results/*.json (not the --tiny/--dry ones)
    python benchmarks/table.py benchmarks/results/a.json ...   # chosen files

Three tables: speed (ours against the baseline, the original's own code where a run had `--original`), the
largest differences of ours' outputs from the original's on the same inputs, and the GPU check (gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import repo  # first: puts code/ on sys.path (errors.py)
from errors import DEBUG_HELP, UsageError, run_main


def _throughput(record: dict, name: str) -> float:
    return next(v["items_per_s"] for v in record["variants"] if v["name"] == name)


def _ours(record: dict) -> dict:
    return next(v for v in reversed(record["variants"]) if v["name"] == record["ours"])


def _context(run: dict) -> str:
    threads = run["device"].get("threads")
    device = run["device"]["name"] + (f" ({threads} thread{'s' * (threads != 1)})" if threads else "")
    commit = run["commit"][:7] + ("-dirty" if run["commit"].endswith("-dirty") else "")
    mode = run["mode"] + (f", {run['statistic']}" if run.get("statistic", "median") != "median" else "")
    return f"{device} | {mode} | {run['date'][:10]} | `{commit}`"


def _baseline(run: dict, record: dict) -> str:
    if record.get("baseline") == "original code":
        return f"original `{run['original_checkout']['commit'][:7]}`"
    return "original's way (emulated)"


def rows(path: Path) -> list[str]:
    """One speed row per workload of one JSON file, plus the GOD protocol for the generation benchmark."""
    run = json.loads(path.read_text())
    context = _context(run)
    out = []
    for w in run["workloads"]:
        cases = [(w["name"], _ours(w), w["ratio"])]
        if "ratio_at_original_batch" in w:  # generation: ours with every lever, at the original's batch too
            cases.append((w["name"] + ", at the original's batch", w["variants"][-1], w["ratio_at_original_batch"]))
        for name, ours, ratio in cases:
            frac = ours.get("fraction_of_peak")
            out.append(
                f"| {name} | {context} | {_baseline(run, w)} | {_throughput(w, w['original']):.4g} | "
                f"{ours['items_per_s']:.4g} | **{ratio:.2f}x** | {ours['name']} | "
                f"{ours.get('achieved_flops', 0) / 1e9:.4g} | {'' if frac is None else f'{100 * frac:.0f}%'} | "
                f"{ours['peak_memory_bytes'] / 2**20:.0f} |"
            )
    protocol = run.get("protocol")
    if protocol:
        s = protocol["protocol_s"]
        out.append(
            f"| GOD protocol (250 images x {protocol['unet_calls_per_image']} UNet calls, composed) | {context} | "
            f"{_baseline(run, run['workloads'][0])} | {protocol['images_per_s']['original']:.3g} | "
            f"{protocol['images_per_s']['ours']:.3g} | **{protocol['ratio']:.2f}x** | "
            f"{s['original'] / 3600:.3g} h -> {s['ours'] / 3600:.3g} h | | | |"
        )
    return out


def speed_table(paths: list[Path]) -> str:
    lines = [
        "| workload | device | mode | date | commit | baseline | baseline items/s | ours items/s | ours / baseline | "
        "ours | GFLOP/s | % of peak | peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in paths:
        lines += rows(path)
    return "\n".join(lines)


def difference_table(paths: list[Path]) -> str:
    """Max |ours - original| per workload and output (only runs that had `--original`)."""
    lines = [
        "| workload | output compared | max abs difference | largest abs value (original) |",
        "| --- | --- | --- | --- |",
    ]
    for path in paths:
        for w in json.loads(path.read_text())["workloads"]:
            for label, d in w.get("max_abs_diff_vs_original", {}).items():
                lines.append(f"| {w['name']} | {label} | {d['max_abs_diff']:.3g} | {d['max_abs_original']:.3g} |")
    return "\n".join(lines)


def _gpu_result(name: str, step: dict) -> str:
    if not step["ok"]:
        return f"failed: {step['error'][:160]}"
    if name == "cuda_tests":
        return step["summary"] or "no summary"
    if name == "stage_a1":
        frac = step.get("fraction_of_bf16_peak")
        peak = "" if frac is None else f", {100 * frac:.0f}% of the bf16 peak"
        rate = f"{step['samples_per_s']:.4g} samples/s, {step['achieved_tflops']:.3g} TFLOP/s"
        return f"{rate}{peak} ({step['steps']} steps)"
    if name == "stage_b":
        rate = "" if step.get("samples_per_s") is None else f"{step['samples_per_s']:.3g} samples/s, "
        return f"{rate}{step['epochs']} epoch(s) at batch {step['batch']} in {step['wall_s']:.0f} s (with start-up)"
    if name == "god_protocol":
        best = step["best"]
        return (
            f"{step['protocol_s']:.1f} s (batch {best['batch']}{', compiled' if best['compiled'] else ''}; "
            f"extrapolated from a slice)"
        )
    if name == "stage_b_memory":
        cells = ", ".join(f"{k} {v}" for k, v in step["max_batch"].items())
        return f"{cells} ({step['method']})"
    return ""


def gpu_check_table(paths: list[Path]) -> str:
    """One row per step of each gpu_check JSON: result, goal, verdict, seconds."""
    lines = [
        "| device | mode | date | commit | step | result | goal | met | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in paths:
        run = json.loads(path.read_text())
        commit = run["commit"][:7] + ("-dirty" if run["commit"].endswith("-dirty") else "")
        context = f"{run['device']['name']} | {run['mode']} | {run['date'][:10]} | `{commit}`"
        for name, step in run["steps"].items():
            met = {True: "yes", False: "**no**", None: ""}[step.get("met")]
            lines.append(
                f"| {context} | {name} | {_gpu_result(name, step)} | {step.get('goal', '')} | {met} | "
                f"{step['seconds']:.0f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", type=Path, help="result JSON files (default: benchmarks/results/*.json)")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = p.parse_args(argv)
    paths = args.files or sorted(p for p in repo.RESULTS_DIR.glob("*.json") if not p.stem.endswith(("-tiny", "-dry")))
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{path}: not a readable results file of benchmarks/ ({err})") from err
        if "workloads" not in record and "steps" not in record:
            raise UsageError(f"{path}: not written by a benchmarks/ script (no 'workloads' or 'steps')")
    bench = [p for p in paths if not p.name.startswith("gpu_check")]
    checks = [p for p in paths if p.name.startswith("gpu_check")]
    print(speed_table(bench))
    print()
    print(difference_table(bench))
    if checks:
        print()
        print(gpu_check_table(checks))


if __name__ == "__main__":
    run_main(main)
