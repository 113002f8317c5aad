"""Issue #30: hostile files, round three. Each test is named after the item it holds: no file corrupts memory (a
process that must not crash), writes through a link (a user's file that must survive), fakes a score (a refusal
instead of a perfect score), costs more than its declared tensors (bounded memory), or fails with an unclear line.

The files are built by hand with the pickle opcodes of test_hostile_files (`Inject`, `save_injected`).
"""

import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import test_hostile_files
from checkpoint import check_finite, load_checkpoint, save_checkpoint
from errors import CheckpointError, UnsafeCheckpointError, UserError
from readers.files import DataFormatError, load_npy, load_npz
from test_bad_inputs import fail, write
from test_hostile_files import Inject, global_op, save_injected
from test_stageA import a1_config

simulation = test_hostile_files.simulation  # the fixtures: a tiny simulated data set, a Stage A1 run killed after
a1_killed = test_hostile_files.a1_killed  # its first epoch

CODE = Path(__file__).resolve().parents[1] / "code"
MB = 2**20


# ---- helpers ----------------------------------------------------------------------------------------------------


def rss_growth(fn) -> int:
    """Bytes the process's peak resident memory rose above its resident memory at the start while `fn` ran."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")

    def status(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) * 1024

    start = status("VmRSS")
    fn()
    return status("VmHWM") - start


def refused(fn, error=UserError, match: str = "") -> str:
    """`fn()` raises `error` whose message matches; returns the message (one line)."""
    with pytest.raises(error, match=match) as info:
        fn()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) < 1200, message
    return message


def opcodes(emit) -> Inject:
    return Inject(emit)


def dtype_op(spec: str, state: tuple | None, copy: bool = True) -> Inject:
    """numpy.dtype(spec, False, copy), then BUILD with `state` (numpy's own pickle of a dtype, with any state)."""

    def emit(p):
        p.write(global_op("numpy", "dtype"))
        p.save((spec, False, copy))
        p.write(pickle.REDUCE)
        if state is not None:
            p.save(state)
            p.write(pickle.BUILD)

    return Inject(emit)


def array_op(dtype: Inject | np.dtype, shape: tuple, data) -> Inject:
    """numpy's pickle of an ndarray: _reconstruct(ndarray, (0,), b'b'), then BUILD (1, shape, dtype, False, data)."""

    def emit(p):
        p.write(global_op("numpy.core.multiarray", "_reconstruct"))
        p.save((np.ndarray, (0,), b"b"))
        p.write(pickle.REDUCE)
        p.save((1, shape, dtype, False, data))
        p.write(pickle.BUILD)

    return Inject(emit)


def call_op(module: str, name: str, args: tuple) -> Inject:
    """`module.name(*args)` as a pickle calls it (REDUCE)."""

    def emit(p):
        p.write(global_op(module, name))
        p.save(args)
        p.write(pickle.REDUCE)

    return Inject(emit)


def field_at(offset: int) -> Inject:
    """A 16-byte structured dtype whose one field sits `offset` bytes in (numpy's setstate does not check it)."""
    return dtype_op("V16", (3, "|", None, ("a",), {"a": (np.dtype("u8"), offset)}, 16, 1, 16))


def pickled_npy(path: Path, value: Inject) -> Path:
    """A .npy file of a 0-d object array whose pickle is `value` (BOLD5000's img_dict.npy layout)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        p = pickle._Pickler(f, protocol=2)
        p.save = lambda obj, save_persistent_id=True, p=p: (
            obj.emit(p) if isinstance(obj, Inject) else pickle._Pickler.save(p, obj, save_persistent_id)
        )
        p.save(array_op(np.dtype("O"), (), [value]))
        p.write(pickle.STOP)
    return path


# ---- 1. no file corrupts memory ------------------------------------------------------------------------------------

MEMORY_PROBES = {  # name -> a value inside a checkpoint's config; each crashed, leaked memory or changed numpy before
    "field 10^9 bytes in": array_op(field_at(10**9), (1,), b"\0" * 16),
    "field 24 bytes in": array_op(field_at(24), (1,), b"\0" * 16),
    "subarray": array_op(
        dtype_op("V12", (3, "|", (np.dtype("f8"), (10**6,)), None, None, 12, 4, 0)), (1,), b"\0" * 12
    ),
    "itemsize 10^6 on U5": array_op(dtype_op("U5", (3, "<", None, None, None, 10**6, 4, 8)), (1,), b"\0" * 20),
    "object flags on bytes": array_op(dtype_op("V8", (3, "|", None, None, None, 8, 1, 63)), (1,), b"\x41" * 8),
    "fields from a type string": array_op(dtype_op("u1,u1", None), (1,), b"\0\0"),
    "object list shorter than its shape": array_op(np.dtype("O"), (10**6,), [1, 2]),
    "data shorter than its shape": array_op(np.dtype("f8"), (10**5,), b"\0" * 8),
    "empty array of 10^11 bytes": call_op("numpy.core.multiarray", "_reconstruct", (np.ndarray, (10**11,), b"b")),
}


@pytest.fixture(scope="module")
def memory_probes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("memory")
    for i, value in enumerate(MEMORY_PROBES.values()):
        save_injected({"model": {}, "config": {"x": value}}, folder / f"{i}.pth")
        pickled_npy(folder / f"{i}.npy", value)
    return folder


LOAD_ALL = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np
from checkpoint import load_checkpoint
from errors import UserError
from safe_pickle import load_pickled_npy
for path in sorted(Path(sys.argv[2]).iterdir(), key=lambda p: (p.suffix, int(p.stem))):
    try:
        value = (load_checkpoint if path.suffix == ".pth" else load_pickled_npy)(path)
        print("loaded", path.name, repr(value)[:200])
    except UserError as e:
        print("refused", e)
"""


def test_1_no_pickled_dtype_or_array_corrupts_memory(memory_probes):
    """In a child process, since each of these crashed (exit 139), read heap memory or changed numpy before."""
    run = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, str(CODE), str(memory_probes)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
    results = run.stdout.splitlines()
    assert len(results) == 2 * len(MEMORY_PROBES), run.stdout
    names = list(MEMORY_PROBES) * 2
    loaded = [f"{names[i]}: {line}" for i, line in enumerate(results) if not line.startswith("refused")]
    assert not loaded, "\n".join(loaded)
    assert all(str(memory_probes) in line for line in results), run.stdout  # each names its file


def test_1_bold5000_reader_refuses_a_hostile_image_dict(tmp_path):
    """The same dtype in BOLD5000's img_dict.npy crashed Stage A2 (`--dataset BOLD5000`)."""
    from safe_pickle import load_pickled_npy

    path = pickled_npy(tmp_path / "img_dict.npy", array_op(field_at(24), (1,), b"\0" * 16))
    refused(lambda: load_pickled_npy(path), UnsafeCheckpointError, r"img_dict\.npy: refused a numpy dtype")


def test_1_plain_numpy_values_still_load(tmp_path):
    """What numpy pickles of its own (arrays of every plain kind, object arrays, scalars) still loads."""
    values = {
        "f4": np.arange(6, dtype=np.float32).reshape(2, 3),
        "big-endian": np.arange(3, dtype=">i8"),
        "fortran": np.asfortranarray(np.ones((2, 3))),
        "text": np.array(["ab", "c"]),
        "dates": np.array(["2020-01-01"], dtype="M8[D]"),
        "objects": np.array([{"a": 1}, [2]], dtype=object),
        "scalar": np.float64(2.5),
        "bool": np.array([True, False]),
    }
    loaded = load_checkpoint(save_checkpoint({"config": values}, tmp_path / "ok.pth"))["config"]
    for name, value in values.items():
        expected = pickle.loads(pickle.dumps(value, protocol=2))  # numpy's own unpickling (big-endian comes native)
        assert type(loaded[name]) is type(expected) and np.array_equal(loaded[name], expected), name
        assert np.asarray(loaded[name]).dtype == np.asarray(expected).dtype, name


# ---- 2. and 3. resuming never writes through a link -----------------------------------------------------------------


def _resume(run: Path, simulation: Path, out: Path):
    import stageA1_mbm_pretrain as a1

    return lambda: a1.main(a1_config(simulation, out, resume=str(run)))


def test_2_resume_refuses_a_linked_figure(a1_killed, simulation, tmp_path):
    """The resumed run wrote `recon_epoch1.png` with savefig, which followed a link to the user's file."""
    run = Path(shutil.copytree(a1_killed, tmp_path / "run"))
    mine = write(tmp_path / "notes.txt", "a user's file")
    (run / "recon_epoch1.png").symlink_to(mine)
    refused(_resume(run, simulation, tmp_path / "out"), CheckpointError, r"--resume .*recon_epoch1\.png.*link")
    assert mine.read_text() == "a user's file"


def test_3_resume_refuses_a_hard_linked_log(a1_killed, simulation, tmp_path):
    """With the run's log.txt hard-linked to a user's file, the resumed run appended its log lines to it."""
    run = Path(shutil.copytree(a1_killed, tmp_path / "run"))
    mine = tmp_path / "notes.txt"
    os.link(run / "log.txt", mine)
    before = mine.read_bytes()
    refused(_resume(run, simulation, tmp_path / "out"), CheckpointError, r"--resume .*log\.txt.*hard link")
    assert mine.read_bytes() == before


def test_2_figures_replace_a_link_instead_of_writing_through_it(tmp_path):
    """Every figure is written to a temporary file and renamed: a link at its name is replaced, its target kept."""
    from figures import grids_side_by_side, image_grid, metric_bar_chart
    from sc_mbm.visualize import plot_reconstructions

    mine = write(tmp_path / "notes.txt", "a user's file")
    images = np.zeros((2, 8, 8, 3), np.uint8)
    writers = {
        "grid.png": lambda p: image_grid(images, images[None], p),
        "bars.png": lambda p: metric_bar_chart({"run": {"pcc": 0.5}}, p),
        "pair.png": lambda p: grids_side_by_side({"a": image_grid(images, images[None], tmp_path / "g.png")}, p, 8),
        "recon.png": lambda p: plot_reconstructions(*(np.zeros((1, 4)),) * 3, np.zeros((1, 2)), p),
    }
    for name, draw in writers.items():
        (tmp_path / name).symlink_to(mine)
        draw(tmp_path / name)
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    assert mine.read_text() == "a user's file"


# ---- 4. a classifier file cannot fake the score ---------------------------------------------------------------------


def _classifier(tmp_path: Path, **changes) -> Path:
    from classifier_file import build_sequential

    layers = [["Flatten", {}], ["Linear", {"in_features": 3 * 8 * 8, "out_features": 4}]]
    spec = {
        "format": "mindvis-classifier/1",
        "layers": layers,
        "state_dict": build_sequential(layers).state_dict(),
        "input_size": 8,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    for key, value in changes.items():
        spec[key] = value(spec[key]) if callable(value) else value
    return save_checkpoint(spec, tmp_path / "clf.pth")


def _nan_weights(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) for k, v in state.items()}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"state_dict": _nan_weights}, r"NaN or inf"),
        ({"std": [0.0, 0.0, 0.0]}, r"std must be three finite numbers above 0"),
        ({"mean": [float("nan")] * 3}, r"mean must be three finite numbers"),
        ({"input_size": 10**6}, r"input_size must be a whole number from 1 to"),
        ({"layers": [["Linear", {"in_features": 10**6, "out_features": 10**6}]]}, r"cannot be built.*Missing key"),
    ],
    ids=["NaN weights", "zero std", "NaN mean", "input size 10^6", "a 4 TB layer without its weights"],
)
def test_4_classifier_file_refuses_what_fakes_or_costs(changes, message, tmp_path):
    """NaN weights or a zero std made the n-way top-1 1.0 on unrelated images; the last two cost memory unbounded."""
    from classifier_file import load_classifier_file

    path = _classifier(tmp_path, **changes)
    growth = rss_growth(
        lambda: refused(lambda: load_classifier_file(path), CheckpointError, rf"clf\.pth: .*{message}")
    )
    assert growth < 100 * MB


def test_4_honest_classifier_file_still_loads(tmp_path):
    from classifier_file import load_classifier_file

    model, preprocess = load_classifier_file(_classifier(tmp_path))
    assert model.num_classes == 4 and preprocess(torch.zeros(1, 3, 16, 16, dtype=torch.uint8)).shape == (1, 3, 8, 8)


# ---- 5. no small file takes all memory or time ----------------------------------------------------------------------


def test_5_zero_strides_cannot_expand_a_tensor(tmp_path):
    """One stored value viewed as 2 * 10^8 (zero strides): the finiteness check expanded it (1.7 KB -> 1.6 GB)."""
    path = save_checkpoint({"model": {"w": torch.ones(1).expand(20_000, 10_000)}}, tmp_path / "strided.pth")
    assert path.stat().st_size < 4096

    def load():
        check_finite(load_checkpoint(path)["model"], path)

    growth = rss_growth(lambda: refused(load, UnsafeCheckpointError, r"strided\.pth: refused a tensor of 200,000,000"))
    assert growth < 100 * MB


def _shared_references(levels: int) -> list:
    value = ["sbj_3"] * 10
    for _ in range(levels):
        value = [value] * 10
    return value


def test_5_shared_references_are_counted_as_often_as_they_are_used(tmp_path):
    """A 1.5 KB pickle whose lists refer to one another tenfold per level: its repr in an error line grew without
    bound (10^9 items)."""
    path = save_checkpoint({"model": {}, "config": {"kam_subs": _shared_references(8)}}, tmp_path / "shared.pth")
    assert path.stat().st_size < 4096
    message = r"shared\.pth: refused: its data expands to more than 1,000,000 values"
    assert rss_growth(lambda: refused(lambda: load_checkpoint(path), UnsafeCheckpointError, message)) < 100 * MB


def test_5_yaml_alias_bomb_is_refused_in_one_line(tmp_path, capsys):
    from config import StageA1Config
    from config_engine import parse_config

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{b}: &{b} [{', '.join(['*' + a] * 10)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    path = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\nkam_subs: *i\n")
    assert path.stat().st_size < 1024

    def parse():
        with pytest.raises(SystemExit) as exit_info:
            parse_config(StageA1Config, ["--config", str(path)])
        assert exit_info.value.code == 2

    assert rss_growth(parse) < 100 * MB
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "bomb.yaml: " in err and "expands to more than" in err, err


def _rezip(path: Path, out: Path, compress: str) -> Path:
    """`path`'s records rewritten into `out`, the records whose name ends with `compress` deflated."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith(compress) else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=method)
    return out


@pytest.mark.parametrize("record", ["data.pkl", "data/0"])
def test_5_compressed_records_are_refused(record, tmp_path):
    """A deflated data.pkl cost minutes of CPU per MB in the Python unpickler; a deflated storage 1000:1 memory."""
    plain = save_checkpoint({"w": torch.zeros(1000)}, tmp_path / "plain.pth")
    path = _rezip(plain, tmp_path / "packed.pth", record)
    refused(lambda: load_checkpoint(path), UnsafeCheckpointError, r"packed\.pth: refused: compressed records")
    assert torch.equal(load_checkpoint(plain)["w"], torch.zeros(1000))


def test_5_a_pickle_builds_a_bounded_number_of_values(tmp_path):
    """A megabyte of one-byte EMPTY_SET opcodes builds a million sets (about 200 MB) on the unpickler's stack."""
    path = save_injected({"x": opcodes(lambda p: p.write(pickle.EMPTY_SET * MB + pickle.MARK + b"("))}, tmp_path / "s")
    load = lambda: load_checkpoint(path)  # noqa: E731
    assert rss_growth(lambda: refused(load, UnsafeCheckpointError, r"builds more than 500,000")) < 100 * MB


def test_5_the_pickled_structure_has_a_size_limit(tmp_path, monkeypatch):
    import checkpoint

    path = save_checkpoint({"model": {str(i): i for i in range(200)}}, tmp_path / "long.pth")
    monkeypatch.setattr(checkpoint, "MAX_PICKLE_BYTES", 1000)
    refused(lambda: load_checkpoint(path), UnsafeCheckpointError, r"long\.pth: refused: its pickled structure")


# ---- 6. every refusal is one clear line naming the file -------------------------------------------------------------


def _deep_list(depth: int) -> Inject:
    return opcodes(lambda p: p.write(pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1)))


@pytest.mark.parametrize(
    "value, message",
    [
        (opcodes(lambda p: (p.save(1), p.write(pickle.BINPERSID))), r"not a readable torch checkpoint.*saved_id"),
        (_deep_list(100_000), r"refused: its data nests deeper than 64 levels"),
        (call_op("_codecs", "encode", (1, 2)), r"refused _codecs\.encode"),
    ],
    ids=["persistent id not a tuple", "nested 100,000 deep", "_codecs.encode of a number"],
)
def test_6_checkpoint_refusals_name_the_file_and_the_rule(value, message, tmp_path):
    path = save_injected({"model": {}, "x": value}, tmp_path / "odd.pth")
    refused(
        lambda: load_checkpoint(path), CheckpointError if "readable" in message else UnsafeCheckpointError, message
    )


def test_6_deeply_nested_yaml_is_one_line(tmp_path, capsys):
    from config import StageA1Config
    from config_engine import parse_config

    path = write(tmp_path / "deep.yaml", "kam_subs: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SystemExit):
        parse_config(StageA1Config, ["--config", str(path)])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "deep.yaml: " in err and "nests deeper" in err, err


def _one_npy(path: Path) -> Path:
    path.write_bytes(_saved(np.ones(3)))
    return path


def _npz_with_header(path: Path, shape: tuple = (10**12,)) -> Path:
    """An .npz whose member 'arr_0' has a header declaring `shape` (float64) over 80 bytes of data."""
    with zipfile.ZipFile(path, "w") as archive, archive.open("arr_0.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": shape})
        member.write(b"\0" * 80)
    return path


def _npz_twice(path: Path) -> Path:
    import warnings

    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        for value in (1.0, 2.0):
            archive.writestr("arr_0.npy", _saved(np.full(3, value)))
    return path


def _npz_of_objects(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arr_0.npy", _saved(np.array([{}, 1], dtype=object)))
    return path


def _saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _saved_npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make, message",
    [
        (_one_npy, r"expected an \.npz archive \(numpy\.savez\), got a single array"),
        (_npz_with_header, r"key 'arr_0' has a header declaring float64 \(1000000000000,\)"),
        (_npz_twice, r"two members named \['arr_0'\]"),
        (_npz_of_objects, r"key 'arr_0' holds Python objects"),
    ],
    ids=["one .npy", "header of 10^12 values", "a name twice", "object array"],
)
def test_6_npz_refusals_name_the_file_and_the_rule(make, message, tmp_path):
    path = make(tmp_path / "sbj_1.npz")
    growth = rss_growth(
        lambda: refused(lambda: load_npz(path, ["arr_0"]), DataFormatError, rf"sbj_1\.npz: .*{message}")
    )
    assert growth < 100 * MB


@pytest.mark.parametrize(
    "content, message",
    [
        (_saved(np.array([{}, 1], dtype=object)), "holds Python objects"),
        (_saved(np.ones(100))[:-8], r"declaring float64 \(100,\) \(800 bytes\) but holds 792"),
        (_saved_npz(np.ones(3)), r"an \.npz archive, not one array"),
        (b"garbage", "no readable .npy header"),
    ],
    ids=["object array", "truncated", "an .npz", "garbage"],
)
def test_6_bold5000_roi_files_refusals_name_the_file(content, message, tmp_path):
    """BOLD5000's ROI files went to an unguarded np.load: raw ValueError/AttributeError."""
    from readers.bold5000 import _bold5000_subject_fmri

    folder = tmp_path / "py"
    for roi in ("EarlyVis", "LOC", "OPA", "PPA", "RSC"):
        np.save(folder.mkdir(exist_ok=True) or folder / f"CSI1_GLMbetas_LH{roi}.npy", np.ones((2, 3), np.float32))
    bad = folder / "CSI1_GLMbetas_LHLOC.npy"
    bad.write_bytes(content)
    refused(lambda: _bold5000_subject_fmri(folder, "CSI1"), DataFormatError, rf"LHLOC\.npy: .*{message}")
    refused(lambda: load_npy(bad), DataFormatError, rf"LHLOC\.npy: .*{message}")


def test_6_a_refused_value_is_quoted_briefly(tmp_path, capsys, monkeypatch):
    """A stored subject list of shared references: its refusal message quoted all of it (62 MB on one line)."""
    from readers.files import check_subjects

    value = _shared_references(5)  # 10^6 names when printed
    message = refused(lambda: check_subjects(value, "finetuned.pth"), DataFormatError, r"finetuned\.pth: subject")
    assert len(message) < 400
    code, err = fail(lambda: check_subjects(value, "finetuned.pth"), capsys, monkeypatch)
    assert code == 1 and len(err) < 400


# ---- 7. a second probe's files (written after the fixes above, by a tester who had read them) ---------------------

world = test_hostile_files.world  # the fixture: tiny data, a label2img folder, a Stage A checkpoint, a finetuned.pth


@pytest.mark.parametrize(
    "values, message",
    [
        ({"guidance_scale": float("nan")}, r"guidance_scale must be a finite number"),
        ({"include_nonavg_test": "no"}, r"include_nonavg_test must be true or false, got 'no'"),
        ({"img_size": 4000}, r"stored img_size 4000 is out of range"),
    ],
    ids=["NaN guidance (black images, scored)", "a boolean as text", "an image side of 4,000"],
)
def test_7_stored_settings_are_typed_and_bounded(values, message, world, tmp_path, capsys, monkeypatch):
    """A stored NaN guidance sampled black images and scored them; "no" was True; 4,000 pixels cost 4.6 GB."""
    path = test_hostile_files._stored(world, tmp_path, **values)
    code, err = fail(test_hostile_files.gen_eval_on(world, tmp_path, path), capsys, monkeypatch)
    assert code == 1 and "stored.pth" in err and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_7_an_architecture_is_not_read_off_empty_tensors(tmp_path):
    """Zero-size tensors claimed 10^5 patches of width 1,024 for a 2 KB file: the encoder built took 5 GB."""
    from checkpoint_layouts import read_stage_a

    state = {
        "patch_embed.proj.weight": torch.zeros(1024, 0, 16),
        "pos_embed": torch.zeros(1, 100_001, 0),
        "decoder_embed.weight": torch.zeros(16, 0),
    }
    path = save_checkpoint({"model": state, "config": {"num_heads": 16}, "epoch": 0}, tmp_path / "empty.pth")
    refused(lambda: read_stage_a(path), CheckpointError, r"empty\.pth: .*read off weights with values")


def test_7_nested_tuple_keys_are_refused_before_they_are_hashed(tmp_path):
    """{T_k: None} with T_i = (T_(i-1),) * 2: hashing takes 2^k steps (k = 40 is hours from 1.3 KB)."""
    path = save_injected({"model": opcodes(lambda p: p.write(b"})" + b"2\x86" * 22 + b"Ns"))}, tmp_path / "keys.pth")
    refused(lambda: load_checkpoint(path), UnsafeCheckpointError, r"keys\.pth: refused a dict key")


def test_7_each_storage_is_checked_once(tmp_path, monkeypatch):
    """One tensor referenced 10^5 times was checked 10^5 times (113 s for a 1 MB file)."""
    import checkpoint

    tensor = torch.zeros(1000)
    path = save_checkpoint({"model": {f"w{i}": tensor for i in range(10_000)}}, tmp_path / "refs.pth")
    calls = []
    monkeypatch.setattr(checkpoint.torch, "isfinite", lambda t: calls.append(t) or torch.ones_like(t, dtype=bool))
    checkpoint.check_finite(load_checkpoint(path)["model"], path)
    assert len(calls) == 1


def test_7_ldm_config_sizes_are_bounded(tmp_path):
    """`timesteps: 30000000` in a 1.4 KB config.yaml took 5 GB; `n_embed: 10^9` asked for 12 GB at once."""
    from dc_ldm.util import load_ldm_config

    folder = test_hostile_files.ldm_folder(tmp_path, lambda m: m["params"].update(timesteps=30_000_000))
    refused(
        lambda: load_ldm_config(folder / "config.yaml"), UserError, r"config\.yaml: key 'model\.params\.timesteps'"
    )


def test_7_classifier_layers_sized_for_images(tmp_path):
    """A pooling to 12,000 x 12,000 made a 432M-class classifier from 1.5 KB (2.3 GB)."""
    from classifier_file import build_sequential, load_classifier_file, save_classifier_file

    layers = [["AdaptiveAvgPool2d", {"output_size": 12_000}], ["Flatten", {}]]
    path = save_classifier_file(tmp_path / "clf.pth", layers, build_sequential(layers), 64, [0.5] * 3, [0.5] * 3)
    message = r"clf\.pth: a layer's output holds 432,000,000 values"
    assert rss_growth(lambda: refused(lambda: load_classifier_file(path), CheckpointError, message)) < 100 * MB


def test_7_evaluate_out_never_writes_through_a_link(tmp_path, capsys, monkeypatch):
    """`--overwrite` wrote metrics.json through a hard link; `--out LINK` wrote into the folder it named."""
    import evaluate

    rng = np.random.default_rng(0)
    for name in ("gt", "recon"):
        np.save(tmp_path / f"{name}.npy", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    mine = write(tmp_path / "mine" / "precious.txt", "a user's file")
    os.link(mine, (tmp_path / "out").mkdir() or tmp_path / "out" / "metrics.json")
    (tmp_path / "linked").symlink_to(mine.parent)
    monkeypatch.chdir(tmp_path)
    for out in ("out", "linked"):
        argv = [
            "evaluate.py",
            "--recon",
            "recon.npy",
            "--gt",
            "gt.npy",
            "--metrics",
            "mse",
            "--out",
            out,
            "--overwrite",
        ]
        code, err = fail(
            lambda argv=argv: (monkeypatch.setattr(sys, "argv", argv), evaluate.main()), capsys, monkeypatch
        )
        assert code == 2 and "link" in err, err
    assert mine.read_text() == "a user's file" and sorted(p.name for p in mine.parent.iterdir()) == ["precious.txt"]


def test_7_run_folders_are_never_made_through_a_link(tmp_path):
    from runtime import make_run_dir

    victim = (tmp_path / "victim").mkdir() or tmp_path / "victim"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gen_eval").symlink_to(victim)
    refused(lambda: make_run_dir(tmp_path / "out", "gen_eval"), UserError, r"gen_eval is a link")
    assert not list(victim.iterdir())


def test_7_a_png_bomb_is_refused_by_its_size(tmp_path):
    """A 9,000 x 9,000 one-bit PNG (a few KB) decoded to 243 MB of RGB, several of them to gigabytes."""
    from PIL import Image

    import evaluate

    Image.new("1", (9000, 9000)).save(tmp_path / "im0.png")
    assert (tmp_path / "im0.png").stat().st_size < 100_000
    grow = rss_growth(lambda: refused(lambda: evaluate._read_image(tmp_path / "im0.png"), UserError, "9000x9000"))
    assert grow < 100 * MB


def test_7_float16_fmri_is_normalised_in_float64():
    """np.std of float16 values near 100 overflowed to inf: the data became all zeros, silently."""
    from readers.arrays import zscore

    x = (np.random.default_rng(0).normal(0, 1, (50, 64)) * 100).astype(np.float16)
    z = zscore(x)
    assert np.isfinite(z).all() and z.std() == pytest.approx(1, abs=1e-3)


def test_7_a_deeply_nested_class_index_names_its_file(tmp_path):
    from readers.god import read_class_index

    write(tmp_path / "imagenet_class_index.json", "[" * 100_000 + "]" * 100_000)
    refused(lambda: read_class_index(tmp_path), DataFormatError, r"imagenet_class_index\.json: expected")


def test_5_a_shared_value_counts_its_levels_wherever_it_is_referenced():
    """A list 50 deep, referenced at the top and again 30 levels down: 81 levels, though each walk of it alone
    is within the limit (the check counted the shared value's depth only where it first met it)."""
    from bounded import TooLarge, check_tree

    deep = path = []
    for _ in range(50):
        path.append([])
        path = path[0]
    chain = link = []
    for _ in range(30):
        link.append([])
        link = link[0]
    link.append(deep)
    for order in ([deep, chain], [chain, deep]):  # whichever reference the walk meets first
        with pytest.raises(TooLarge, match="nests deeper than 64 levels"):
            check_tree(order)
    check_tree([deep, [deep]])  # the same value twice near the top: within the limit
