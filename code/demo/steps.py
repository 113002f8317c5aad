"""The demo's step cache and stage runner: each step is made once per recipe, and every stage runs through its
command line in its own process, as a user runs it.

Every result is stamped beside it (`<target>.recipe.json`: the recipe's hash, the seconds it took, what it did), so
a second run reuses what is done and an edited recipe redoes exactly what it changes; nothing without a stamp is
ever deleted.

The studies' results outlive the step cache: a study's step can be *kept* (its result is a few JSON files: a
decoding's metrics.json, a table's numbers) or *deferred* (a model only kept results are made from). Every kept or
deferred step is entered in the ledger, `results/ledger/` (tracked by git, unlike the rest of `results/`; one JSON
file per step: its recipe hash, seconds, where and when it was made, and a kept step's JSON files). A kept step the
ledger holds with the same recipe hash is restored from it instead of run, and a deferred step runs only when a step
that builds on it has to run, so a study committed piece by piece continues on a fresh clone where it stopped,
without retraining the models of the pieces it has. To recompute everything, move `results/ledger` aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from atomic import write_text_atomically
from checkpoint import load_checkpoint
from errors import UserError
from runtime import format_seconds, machine

CODE = Path(__file__).resolve().parents[1]
ROOT = CODE.parent
log = logging.getLogger("mindvis.demo")

# The recipe hash of the step being made: a stage run inside it belongs to that recipe (run_stage's stamp).
_STEP_RECIPE: ContextVar[str | None] = ContextVar("step_recipe", default=None)


def recipe_hash(recipe: Any, root: Path | None = None) -> str:
    """A short hash of a JSON-able recipe; paths inside `root` count as relative to it, so that the same recipe in
    another checkout (a fresh clone elsewhere) has the same hash."""
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256((text if root is None else relative_paths(text, root)).encode()).hexdigest()[:16]


def relative_paths(text: str, root: Path) -> str:
    """`text` (JSON) with every path inside `root` (as given, or resolved) written from `<root>`."""
    for prefix in dict.fromkeys((str(root), str(root.resolve()))):
        text = re.sub(re.escape(json.dumps(prefix)[1:-1]) + r'(?=[/"])', "<root>", text)
    return text


def stamp_of(target: Path) -> Path:
    """The recipe stamp the demo writes beside everything it makes: `<target>.recipe.json`."""
    return target.parent / f"{target.name}.recipe.json"


def remove_made(target: Path) -> None:
    """Delete `target` (a file or a folder) only if the demo made it, i.e. its recipe stamp lies beside it."""
    if not stamp_of(target).is_file():
        raise UserError(
            f"{target} was not made by the demo (no {stamp_of(target).name} beside it); refusing to "
            "delete it: move it away or choose another --root_path"
        )
    shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()


LEDGER_MAX_BYTES = 4_000_000  # a kept step's JSON files, together: a decoding's metrics.json is about 100 kB


class Ledger:
    """The committed record of the studies' kept and deferred steps: `<root>/results/ledger/<target>.json`, where
    `<target>` is the step's target relative to `root` (module docstring). Paths inside the root are entered from
    `<root>` (no user's folders in the record) and restored into this checkout's root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.folder = self.root / "results" / "ledger"

    def entry_path(self, target: Path) -> Path | None:
        """Where `target`'s entry lies (None for a target outside the root: not entered). The path is taken as
        written, so a step cache on a linked disk (`results/demo` a link) is entered as well."""
        try:
            relative = Path(os.path.abspath(target)).relative_to(self.root)
        except ValueError:
            return None
        path = self.folder / f"{relative}.json"
        if not path.parent.resolve().is_relative_to(self.folder.resolve()):
            raise UserError(f"{path}: a link inside {self.folder} leads out of it; the ledger writes only inside it")
        return path

    def read(self, target: Path, digest: str) -> dict | None:
        """`target`'s entry if it was made by the recipe `digest`, else None. An entry that is not valid JSON, or
        not an entry, is named and ignored (the step is made again, and its entry replaced)."""
        path = self.entry_path(target)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(_absolute_paths(path.read_text(), self.root))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("ledger entry %s is not valid JSON (%s): ignored", path, e)
            return None
        if not (isinstance(entry, dict) and isinstance(entry.get("seconds"), int | float)):
            log.warning("ledger entry %s has no seconds: not an entry, ignored", path)
            return None
        return entry if entry.get("hash") == digest else None

    def write(self, target: Path, record: dict, kept: bool, made: dict | None = None) -> None:
        """Enter a step made (or reused) at `target` with its stamp `record` (`made`: where and when, default
        here and now); a kept step with its JSON files. A kept result too large to enter is said, not entered."""
        path = self.entry_path(target)
        if path is None:
            return
        entry = {**{k: v for k, v in record.items() if k not in ("restored_from", "made")}, "made": made or _here()}
        if kept:
            try:
                entry["files"] = kept_files(target)
            except UserError as e:
                log.warning("%s: not entered in the ledger", e)
                return
        write_text_atomically(path, relative_paths(json.dumps(entry, indent=1, default=str), self.root) + "\n")

    def restore(self, target: Path, entry: dict) -> None:
        """Write a kept step's JSON files back to `target` (a file, or a folder of them); names checked first."""
        files = entry.get("files")
        if not isinstance(files, dict) or not files or ("" in files and len(files) > 1):
            raise UserError(f"ledger entry for {target}: 'files' must map file names to their JSON content")
        if list(files) == [""]:
            write_text_atomically(target, json.dumps(files[""], indent=1) + "\n")
            return
        for name in files:  # every name checked before anything is written
            inside = "\0" not in name and (target / name).resolve().is_relative_to(target.resolve())
            if not inside or not name.endswith(".json"):
                raise UserError(f"ledger entry for {target} names the file {name!r}: expected a .json file inside it")
        for name, content in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(target / name, json.dumps(content, indent=1) + "\n")


def _absolute_paths(text: str, root: Path) -> str:
    """The inverse of `relative_paths`: `<root>` written as this checkout's root."""
    return text.replace("<root>", json.dumps(str(root))[1:-1])


def kept_files(target: Path) -> dict[str, Any]:
    """A kept step's JSON files, parsed: {'': content} for a JSON file, {relative name: content} for a folder (its
    regular *.json files; links are never followed)."""
    if target.is_file() and not target.is_symlink():
        paths = [target]
    else:
        paths = sorted(p for p in target.rglob("*.json") if p.is_file() and not p.is_symlink())
    if sum(p.stat().st_size for p in paths) > LEDGER_MAX_BYTES:
        raise UserError(f"{target}: a kept step's JSON files exceed {LEDGER_MAX_BYTES:,} bytes")
    if paths == [target]:
        return {"": json.loads(target.read_text())}
    return {str(p.relative_to(target)): json.loads(p.read_text()) for p in paths}


_MACHINE: dict | None = None


def _here() -> dict:
    """Where and when a ledger entry is made: the code's commit (with '+changes' if the working tree differs from
    it), the machine (runtime.machine) and the date."""
    global _MACHINE
    if _MACHINE is None:
        git = ["git", "-C", str(CODE)]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True, text=True).stdout
        except OSError:  # no git: the code's version is unknown
            commit, dirty = "", ""
        _MACHINE = {"commit": (commit + "+changes" * bool(dirty.strip())) or None, "machine": machine()}
    return {**_MACHINE, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


class Steps:
    """Runs each step unless its result exists with the same recipe hash; records what every step did. With a
    `ledger`, kept steps are restored from it and deferred steps wait until a step that builds on them runs."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.records: list[dict] = []
        self.ledger = ledger
        self._deferred: dict[tuple[str, str], tuple] = {}  # (hash, target) -> the step's arguments and record

    def __call__(
        self,
        name: str,
        target: Path,
        recipe: dict,
        run: Callable[[], dict | None],
        remove_stale: bool = True,
        keep: bool = False,
        defer: bool = False,
    ) -> str:
        """Make `target` with `run()` (which may return facts to record, e.g. steps done); returns the recipe hash.

        A `target` made by another recipe is deleted first (`remove_stale`; the simulation replaces its own); one
        without a stamp was not made by the demo and is refused. `keep`: the result is its JSON files, entered in
        the ledger whole and restored from it; `defer`: a model that runs only when a step whose recipe names its
        hash has to run (the records name the step at once, with the seconds the ledger holds for it)."""
        root = self.ledger.root if self.ledger is not None else None
        digest = recipe_hash(recipe, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        ledger = self.ledger if keep or defer else None
        defer = defer and ledger is not None  # without a ledger every step is made at once
        entry = ledger.read(target, digest) if ledger is not None else None
        done = self._made(target, recipe, digest, entry)
        if done is not None:
            log.info("[%s] reusing %s (recipe %s, made in %s)", name, target, digest, format_seconds(done["seconds"]))
            self.records.append({"step": name, **done, "reused": True})
            if ledger is not None and entry is None:  # a step cache made before the ledger: entered now
                ledger.write(target, done, keep, {**_here(), "entered from the step cache": True})
            return digest
        if keep and entry is not None and "files" in entry:
            if target.exists():
                remove_made(target)
            ledger.restore(target, entry)
            done = {k: v for k, v in entry.items() if k != "files"}
            restored = json.dumps({**done, "restored_from": str(ledger.entry_path(target))}, default=str)
            write_text_atomically(stamp_of(target), restored + "\n")
            log.info("[%s] restored %s from the ledger (recipe %s, made %s)", name, target, digest, entry["made"])
            self.records.append({"step": name, **done, "reused": True, "restored": True})
            return digest
        if defer:
            seconds = (entry or {}).get("seconds")
            record = {"step": name, "hash": digest, "seconds": seconds, "reused": False, "deferred": True}
            self.records.append(record)
            self._deferred[digest, str(target)] = (name, target, recipe, run, remove_stale, record)
            log.info("[%s] deferred until a step that builds on it has to run (recipe %s)", name, digest)
            return digest
        self._make_deferred(recipe)
        return self._make(name, target, recipe, digest, run, remove_stale, keep)

    def _made(self, target: Path, recipe: dict, digest: str, entry: dict | None) -> dict | None:
        """`target`'s stamp if it was made by this recipe, else None. A stamp of the recipe's hash before paths
        counted from the root (an older step cache) is taken and rewritten; a result restored from the ledger
        whose entry has since gone (moved aside to recompute) or changed is not taken."""
        stamp = stamp_of(target)
        if not (target.exists() and stamp.is_file()):
            return None
        done = json.loads(stamp.read_text())
        if done.get("hash") not in (digest, recipe_hash(recipe)):
            return None
        if "restored_from" in done and entry is None:
            return None
        if done["hash"] != digest:
            done["hash"] = digest
            write_text_atomically(stamp, json.dumps(done, indent=1, default=str) + "\n")
        return done

    def _make_deferred(self, recipe: dict) -> None:
        """Make every deferred step whose recipe hash the recipe names (and, through their recipes, theirs)."""
        text = json.dumps(recipe, sort_keys=True, default=str)
        for key in [k for k in self._deferred if k[0] in text]:
            if key not in self._deferred:  # made already, as a step the one before needed
                continue
            name, target, step_recipe, run, remove_stale, record = self._deferred[key]
            self._make_deferred(step_recipe)
            if self._made(target, step_recipe, key[0], None) is None:  # not made meanwhile by another call
                log.info("[%s] needed now: making the deferred step", name)
                self._make(name, target, step_recipe, key[0], run, remove_stale, keep=False, defer=True)
                record.update(self.records.pop(), deferred=False)  # the step's record, where it was deferred
            del self._deferred[key]

    def _make(
        self,
        name: str,
        target: Path,
        recipe: dict,
        digest: str,
        run: Callable[[], dict | None],
        remove_stale: bool,
        keep: bool,
        defer: bool = False,
    ) -> str:
        """Run a step whose result is not there (its recipe's hash: `digest`), stamp it and, if kept or deferred,
        enter it in the ledger."""
        stamp = stamp_of(target)
        if target.exists():
            log.info("[%s] %s was made by another recipe: redoing it", name, target)
            if remove_stale:
                remove_made(target)
        log.info("[%s] running ...", name)
        start = time.time()
        token = _STEP_RECIPE.set(digest)
        try:
            facts = run() or {}
        finally:
            _STEP_RECIPE.reset(token)
        record = {"hash": digest, "seconds": round(time.time() - start, 1), **facts, "recipe": recipe}
        write_text_atomically(stamp, json.dumps(record, indent=1, default=str) + "\n")
        if self.ledger is not None and (keep or defer):
            self.ledger.write(target, record, keep)
        log.info("[%s] done in %s -> %s", name, format_seconds(record["seconds"]), target)
        self.records.append({"step": name, **record, "reused": False})
        return digest


def run_stage(script: str, flags: dict, output_path: Path) -> Path:
    """Run a stage script in its own process, as a user would; returns its run folder. `output_path` is stamped as
    the demo's first, so that a failed attempt's folder can be removed by the next one.

    A training stage (Stage A, Stage B) writes its training checkpoint after every epoch, whatever the recipe says
    (`ckpt_every` 1; checkpointing changes nothing a stage computes: tests/test_stageA.py, test_stageB_gen_eval.py),
    and an earlier attempt of the same
    command that was killed is resumed from its last checkpoint (`--resume`) instead of started again; one that
    had finished its epochs is taken as it is. "The same" includes the recipe of the step it runs in (a command
    names its inputs by path, and a remade input keeps its path): an attempt of another recipe is removed."""
    argv = [sys.executable, str(CODE / script), "--output_path", str(output_path)]
    if script.startswith("stage"):  # the training stages (stageA1_, stageA2_, stageB_); not gen_eval
        flags = {**flags, "ckpt_every": 1}
    for key, value in flags.items():
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list | tuple):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", "None" if value is None else str(value)]
    attempt = {"made_by": "demo.steps.run_stage", "argv": argv[1:], "recipe": _STEP_RECIPE.get()}
    earlier = _earlier_attempt(output_path, attempt)
    done = _checkpointed_epochs(earlier) if earlier is not None else 0
    if done and done >= int(flags.get("num_epoch") or 0):
        log.info("an earlier attempt of this step finished its epochs: %s", earlier)
        return earlier
    if done:
        log.info("resuming the earlier attempt of this step after epoch %d: %s", done, earlier)
        log.info("$ %s --resume %s", " ".join(argv[1:]), earlier)
        result = subprocess.run([*argv, "--resume", str(earlier)])
    else:
        if output_path.exists() or output_path.is_symlink():
            remove_made(output_path)  # a failed earlier attempt of this step, or one of another command
        log.info("$ %s", " ".join(argv[1:]))
        output_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(stamp_of(output_path), json.dumps(attempt) + "\n")
        result = subprocess.run(argv)
    if result.returncode != 0:
        raise UserError(f"{script} failed (exit code {result.returncode}); its message is above")
    (run_dir,) = (p for p in output_path.glob("*/*") if p.is_dir())
    return run_dir


def _earlier_attempt(output_path: Path, attempt: dict) -> Path | None:
    """The run folder of an earlier attempt of exactly this command and step recipe in `output_path`, or None."""
    stamp = stamp_of(output_path)
    if not (output_path.is_dir() and stamp.is_file()):
        return None
    try:
        same = json.loads(stamp.read_text()) == attempt
    except json.JSONDecodeError:
        return None
    runs = [p for p in output_path.glob("*/*") if p.is_dir()]
    return runs[0] if same and len(runs) == 1 else None


def _checkpointed_epochs(run_dir: Path) -> int:
    """How many epochs the training checkpoint of a run folder holds (0 without one)."""
    path = run_dir / "checkpoint.pth"
    if not path.is_file():
        return 0
    epoch = load_checkpoint(path).get("epoch", -1)
    return epoch + 1 if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def _epochs_done(run_dir: Path) -> int:
    """How many epochs a run folder's metrics.jsonl records as done (0 when it has none)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return len({e for line in lines if '"epoch"' in line and (e := json.loads(line)["epoch"]) >= 0})


def write_json(data: dict, path: Path) -> dict:
    """Write `data` as JSON to `path` (whole or not at all); returns it (a step's facts)."""
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")
    return data


def train_stage(script: str, flags: dict, output_path: Path, artefact: str, target: Path) -> dict:
    """Run a training stage, copy its `artefact` to `target`; the facts: the run and the epochs it trained."""
    run_dir = run_stage(script, flags, output_path)
    epochs = _epochs_done(run_dir)
    return {**copy_result(run_dir / artefact, target), "steps": f"{epochs} epoch{'s' * (epochs != 1)}"}


def copy_result(source: Path, target: Path) -> dict:
    """Copy a run's result (a file or a folder) to the demo's target; the facts: where it came from."""
    shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
    return {"source": str(source)}
