"""Score any method's reconstructions against the images that were seen: MinD-Vis's metrics and MindEye's.

    python code/evaluate.py --recon results/gen_eval/<run>/samples.npy --gt stimuli.npy
    python code/evaluate.py --recon my_recons/ --gt test_images/ --metrics mindeye --out results/mine
    python code/evaluate.py --recon my_recons/ --gt test_images/ --metrics mse pcc ssim n_way --n_way 50
    python code/evaluate.py --compare results/evaluate/<run A> results/evaluate/<run B>

Accepted layouts (a folder and a .npy may be mixed):

  --gt     a folder of PNG/JPG images, one per test image, taken in file-name order; or a .npy of
           uint8 (N, H, W, 3)
  --recon  a folder of PNG/JPG files named <gt-stem>_<k>.<ext>: sample k of the image <gt-stem>
           (test_images/cat.png -> my_recons/cat_0.png, cat_1.png, ...; every image with the same k's,
           sample set s = the s-th smallest k); or a .npy of uint8 (S, N, H, W, 3) or (N, H, W, 3), items in
           the ground truth's order

Images are read as RGB (greyscale and RGBA files are converted) and must all have the ground truth's size.
Writes `metrics.json` (scores, their 95% intervals from a bootstrap over the test items, every item's scores,
the item names, n-way ties, the reasons of skipped metrics, chance levels) and `metrics.png` (a bar per metric,
chance dashed) into --out (a new folder by default; an --out that already holds them is refused unless
--overwrite), and prints a table. Metrics whose network weights are not in the local caches are skipped with
the path they expect; nothing is downloaded.

--compare RUN_A RUN_B (folders holding a metrics.json of evaluate.py or gen_eval, or the files) prints, for each
metric both scored item by item, B - A with its 95% interval from a paired bootstrap over the same items; runs
scored on other items, or files without item scores, are refused.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

import eval_metrics
from atomic import write_text_atomically
from bounded import check_tree
from errors import DEBUG_HELP, ArgumentParser, MetricsFileError, UsageError, UserError, one_line, run_main
from figures import metric_bar_chart
from intervals import format_interval, paired_difference
from readers.files import DataFormatError, load_npy
from readers.shards import decode_image
from runtime import make_run_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_METRICS = (*eval_metrics.DEFAULT_METRICS, "mindeye")


def _read_image(path: Path) -> np.ndarray:
    return decode_image(path, str(path))


def _image_files(folder: Path, flag: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{flag} {folder}: the folder holds no PNG/JPG images")
    return files


def _stack(images: list[np.ndarray], files: list[Path], size: tuple[int, int], what: str) -> np.ndarray:
    for img, path in zip(images, files, strict=True):
        if img.shape[:2] != size:
            raise UserError(f"{path}: {img.shape[1]}x{img.shape[0]} pixels, but {what} are {size[1]}x{size[0]}")
    return np.stack(images)


def _load_npy(path: Path, flag: str, shapes: str) -> np.ndarray:
    try:
        array = load_npy(path)
    except DataFormatError as err:
        raise UserError(f"{flag} {err}") from None
    if array.dtype != np.uint8:
        raise UserError(
            f"{flag} {path}: expected uint8 {shapes}, got {array.dtype} (from floats in [0, 1]: "
            "(x * 255).round().astype(np.uint8))"
        )
    if array.ndim not in (4, 5) or array.shape[-1] != 3:
        raise UserError(f"{flag} {path}: expected uint8 {shapes}, got shape {array.shape}")
    return array


def _check_path(path: Path, flag: str) -> None:
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file or folder")
    if not path.is_dir() and path.suffix.lower() != ".npy":
        raise UsageError(f"{flag} {path}: expected a folder of PNG/JPG images or a .npy file")


def load_gt(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ground truth uint8 (N, H, W, 3) and the names of its items (file stems, or indices of a .npy)."""
    _check_path(path, "--gt")
    if path.is_dir():
        files = _image_files(path, "--gt")
        images = [_read_image(p) for p in files]
        return _stack(images, files, images[0].shape[:2], f"{files[0].name} and the rest"), [p.stem for p in files]
    gt = _load_npy(path, "--gt", "(N, H, W, 3)")
    if gt.ndim != 4:
        raise UserError(f"--gt {path}: expected uint8 (N, H, W, 3), got shape {gt.shape}")
    return gt, [str(i) for i in range(len(gt))]


def load_recon(path: Path, gt: np.ndarray, names: list[str]) -> np.ndarray:
    """The reconstructions uint8 (S, N, H, W, 3), matched to the ground truth (N, H, W, 3) and its item names."""
    _check_path(path, "--recon")
    if path.is_dir():
        samples = _match_recon_files(path, names)
        files = [f for per_item in samples.values() for f in per_item]
        images = _stack([_read_image(f) for f in files], files, gt.shape[1:3], "the ground truth images")
        return images.reshape(len(names), -1, *gt.shape[1:]).swapaxes(0, 1)  # read item by item: (N, S) -> (S, N)
    recon = _load_npy(path, "--recon", "(S, N, H, W, 3) or (N, H, W, 3)")
    recon = recon[None] if recon.ndim == 4 else recon
    if recon.shape[1] != len(gt):
        raise UserError(f"--recon {path}: {recon.shape[1]} reconstructions per sample set, but --gt has {len(gt)}")
    if recon.shape[2:] != gt.shape[1:]:
        raise UserError(f"--recon {path}: images of shape {recon.shape[2:]}, but --gt's are {gt.shape[1:]}")
    return recon


def _match_recon_files(folder: Path, names: list[str]) -> dict[str, list[Path]]:
    """Item name -> its sample files <name>_<k>.<ext> in order of k; every item must have the same k's."""
    samples: dict[str, dict[int, Path]] = {name: {} for name in names}
    for path in _image_files(folder, "--recon"):
        stem, _, k = path.stem.rpartition("_")
        if stem not in samples or not k.isdigit():
            raise UserError(
                f"--recon {path}: expected files named <gt-stem>_<k>.png|jpg for the --gt images "
                f"(e.g. {names[0]}_0.png)"
            )
        if int(k) in samples[stem]:
            raise UserError(f"--recon {path}: sample {int(k)} of {stem} appears twice ({samples[stem][int(k)].name})")
        samples[stem][int(k)] = path
    ks = sorted(samples[names[0]])
    for name in names:
        if sorted(samples[name]) != ks:
            raise UserError(
                f"--recon {folder}: {name} has {len(samples[name])} sample files (k = {sorted(samples[name])}) "
                f"but {names[0]} has {len(ks)} (k = {ks}); every image needs the same samples"
            )
    return {name: [samples[name][k] for k in ks] for name in names}


def read_run(path: Path) -> tuple[dict, Path]:
    """The metrics.json of a run (the file, or the folder holding it) and its path; it must hold item scores."""
    file = path / "metrics.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
        check_tree(report)
    except (OSError, ValueError, RecursionError) as err:  # TooLarge is a ValueError
        raise MetricsFileError(f"{file}: not a readable metrics.json ({one_line(err)})") from None
    if not isinstance(report, dict) or not isinstance(report.get("per_item"), dict) or not report["per_item"]:
        raise MetricsFileError(
            f"{file}: no per-item scores (written by an older evaluate.py or gen_eval); score the run again to compare"
        )
    scores, per_item, names = report.get("scores"), report["per_item"], report.get("items")
    well_formed = (
        isinstance(scores, dict)
        and all(_is_number(v) for v in scores.values())
        and all(isinstance(v, list) and all(map(_is_number, v)) for v in per_item.values())
        and (names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)))
    )
    if not well_formed:
        raise MetricsFileError(
            f"{file}: expected 'scores' (metric: number), 'per_item' (metric: list of numbers) and 'items' (a list "
            "of names, or null), as evaluate.py and gen_eval write them"
        )
    counts = {len(values) for values in per_item.values()}
    if len(counts) > 1 or (names is not None and counts != {len(names)}):
        raise MetricsFileError(f"{file}: item scores of {sorted(counts)} items, item names {len(names or [])}")
    report["num_items"] = counts.pop()
    return report, file


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(report: dict) -> str:
    names = report["items"] or ["unnamed"]
    return f"{report['num_items']} items ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def compare_runs(a: dict, b: dict, file_a: Path, file_b: Path) -> str:
    """B - A for each metric both runs scored item by item, with its paired 95% interval, as a table.

    Items are paired by name where both runs name them (folders of images), by position otherwise (a .npy).
    """
    by_name = a.get("items") is not None and b.get("items") is not None
    if a["num_items"] != b["num_items"] or (by_name and a["items"] != b["items"]):
        raise MetricsFileError(
            f"{file_b}: scored on {_describe(b)}, but {file_a} on {_describe(a)}; a paired comparison needs the "
            "same items"
        )
    names = [name for name in b["scores"] if name in a["scores"]]
    width = max([len("metric"), *map(len, names)])
    lines = [
        f"B - A, paired over {a['num_items']} items by {'name' if by_name else 'position'} (A: {file_a}, B: {file_b})",
        f"{'metric':<{width}}  {'A':>9}  {'B':>9}  {'B - A':>9}  {'95% interval':<18}  better",
    ]
    for name in names:
        if name not in a["per_item"] or name not in b["per_item"]:
            lines.append(f"{name:<{width}}  {a['scores'][name]:>9.4f}  {b['scores'][name]:>9.4f}  n/a: no item scores")
            continue
        diff, interval = paired_difference(a["per_item"][name], b["per_item"][name])
        better = "lower" if name in eval_metrics.LOWER_IS_BETTER else "higher"
        scores = f"{a['scores'][name]:>9.4f}  {b['scores'][name]:>9.4f}  {diff:>+9.4f}"
        lines.append(f"{name:<{width}}  {scores}  {format_interval(interval):<18}  {better}")
    return "\n".join(lines)


OUTPUTS = ("metrics.json", "metrics.png")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, or holds our output files already (unless `overwrite`) or as links."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_symlink():
        raise UsageError(f"--out {out} is a link; name the folder itself (results are never written through a link)")
    present = [name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    linked = [n for n in present if (out / n).is_symlink() or ((out / n).is_file() and (out / n).stat().st_nlink > 1)]
    if linked:
        raise UsageError(f"--out {out}: {', '.join(linked)} is a link or hard-linked; refusing to write through it")
    if present and not overwrite:
        raise UsageError(
            f"--out {out} already holds {', '.join(present)}; pass --overwrite to replace them, or "
            "choose another --out"
        )


def main() -> None:
    """Command line: load, score, write metrics.json and metrics.png, print the table."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recon", type=Path, help="reconstructions: a folder or a .npy (see above)")
    parser.add_argument("--gt", type=Path, help="ground truth images: a folder or a .npy (see above)")
    parser.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("RUN_A", "RUN_B"),
        help="print B - A of two runs' metrics.json (folders or files) with paired 95%% intervals, instead of scoring",
    )
    names = f"metrics: {', '.join(eval_metrics.METRICS)}; groups: {', '.join(eval_metrics.METRIC_GROUPS)}"
    default = " ".join(DEFAULT_METRICS)
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(DEFAULT_METRICS),
        help=f"metric or group names (default: {default}); {names}",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: a new results/evaluate/<time stamp>)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace metrics.json and metrics.png of an --out that already holds them (refused otherwise)",
    )
    parser.add_argument("--n_way", type=int, default=50, help="n of the n-way top-k classification (default: 50)")
    parser.add_argument("--num_trials", type=int, default=1000, help="n-way trials per reconstruction")
    parser.add_argument("--top_k", type=int, default=1, help="k of the n-way top-k classification (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the n-way trials")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=int, default=64, help="images per network call")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args()
    if args.compare:
        (a, file_a), (b, file_b) = map(read_run, args.compare)
        print(compare_runs(a, b, file_a, file_b))
        return
    if args.recon is None or args.gt is None:
        raise UsageError("--recon and --gt are both needed (or --compare RUN_A RUN_B)")
    try:
        metrics = eval_metrics.expand_metrics(args.metrics)
    except ValueError as err:
        raise UsageError(f"--metrics: {err}") from err
    for flag in ("n_way", "num_trials", "top_k", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.out is not None:
        check_out(args.out, args.overwrite)
    logging.getLogger("mindvis.eval_metrics").setLevel(logging.ERROR)  # the table gives skipped metrics' reasons

    gt, names = load_gt(args.gt)
    recon = load_recon(args.recon, gt, names)
    print(f"{recon.shape[0]} x {recon.shape[1]} reconstructions of {len(gt)} images, {gt.shape[2]}x{gt.shape[1]}")
    device = None if args.device == "auto" else args.device
    settings = dict(n_way=args.n_way, num_trials=args.num_trials, top_k=args.top_k, seed=args.seed)
    try:
        result = eval_metrics.evaluate(gt, recon, metrics, **settings, device=device, batch_size=args.batch_size)
    except ValueError as err:  # images the metrics cannot score (too small, fewer classes than --n_way, ...)
        raise UserError(str(err)) from err
    chance = {name: eval_metrics.chance_level(name, args.n_way) for name in result["scores"]}
    chance = {name: level for name, level in chance.items() if level is not None}

    out = args.out or make_run_dir(Path("results"), "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    lower = sorted(eval_metrics.LOWER_IS_BETTER & set(result["scores"]))
    report = {
        **result,
        "chance": chance,
        "lower_is_better": lower,
        "gt": str(args.gt),
        "recon": str(args.recon),
        "num_items": len(gt),
        "items": names if args.gt.is_dir() else None,  # a .npy's items have positions only
        "num_samples": recon.shape[0],
        **settings,
    }
    write_text_atomically(out / "metrics.json", json.dumps(report, indent=2))  # replaces, never writes through
    print(eval_metrics.format_table(result, chance))
    if result["scores"]:
        label = args.recon.name
        intervals = {label: result.get("intervals", {})}
        metric_bar_chart({label: result["scores"]}, out / "metrics.png", chance, f"{args.recon}", intervals)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
