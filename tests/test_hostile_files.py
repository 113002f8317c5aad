"""Issue #23: hostile files and paths. Each test is named after the item it holds: a file that would run code
leaves its marker uncreated, a user's file survives, a silent wrong run becomes one clear line.

Helpers shared with the bad-input tests (`world`, `fail`, `write`, `Pwn`) come from test_bad_inputs.py.
"""

import copyreg
import json
import os
import pickle
import re
import shutil
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import feature_nets
import test_bad_inputs
from checkpoint import load_checkpoint, save_checkpoint
from errors import CheckpointError, UnsafeCheckpointError, UserError
from test_bad_inputs import MAE, Pwn, fail, write
from test_stageA import Killed, a1_config, kill_at

world = test_bad_inputs.world  # the fixture: tiny data, a label2img folder, a Stage A checkpoint, a finetuned.pth

# ---- helpers: checkpoints with hand-written pickle opcodes ----------------------------------------------------


class Inject:
    """Stands for raw pickle opcodes in an object being saved: `emit(pickler)` writes them (leaving one value)."""

    def __init__(self, emit):
        self.emit = emit


class _InjectingPickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Inject):
            return obj.emit(self)
        return super().save(obj, save_persistent_id)


_INJECTING = types.SimpleNamespace(Pickler=_InjectingPickler, dump=pickle.dump, __name__="injecting_pickle")


def global_op(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def build_on(module: str, name: str, state) -> Inject:
    """Opcodes that push the global `module.name` and BUILD it with `state`: setattr on a function or class."""

    def emit(pickler):
        pickler.write(global_op(module, name))
        pickler.save(state)
        pickler.write(pickle.BUILD)

    return Inject(emit)


def save_injected(obj, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, pickle_module=_INJECTING, _use_new_zipfile_serialization=not legacy)
    return path


# ---- 1. TorchScript archives and the legacy format never reach torch's own loaders -----------------------------


class _WritesOnLoad(torch.nn.Module):
    """A TorchScript module whose `__setstate__` (run by torch.jit.load) creates the file its state names."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        written = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)  # creates the file
        written.fill_(65)
        self.path = state[0] + str(int(written.sum()))  # used, so the script keeps the calls
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_1_torchscript_archive_runs_nothing(tmp_path):
    """torch.load hands a zip holding `constants.pkl` to torch.jit.load, whose `__setstate__` writes files."""
    marker = tmp_path / "pwned"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; the format still loads
        torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), tmp_path / "script.pth")
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=r"script\.pth: .*TorchScript"):
        load_checkpoint(tmp_path / "script.pth")
    assert not marker.exists()


def test_1_legacy_format_is_refused_with_the_way_out(tmp_path):
    """The pre-1.6 format goes through torch's legacy loader (its own unpickling steps): refused, one line."""
    path = tmp_path / "old.pth"
    torch.save({"model": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"old\.pth: refused: .*legacy.*re-save"):
        load_checkpoint(path)


# ---- 2. BUILD never touches a function or a class ----------------------------------------------------------------


def test_2_build_cannot_change_how_every_later_tensor_loads(tmp_path):
    """A file setting `_rebuild_tensor_v2.__defaults__` would negate every tensor loaded afterwards, silently."""
    rebuild = torch._utils._rebuild_tensor_v2
    defaults = rebuild.__defaults__
    evil = save_injected(
        {
            "model": {"w": torch.ones(2)},
            "x": build_on("torch._utils", "_rebuild_tensor_v2", (None, {"__defaults__": ({"neg": True},)})),
        },
        tmp_path / "evil.pth",
    )
    clean = save_checkpoint({"w": torch.ones(2)}, tmp_path / "clean.pth")
    try:
        with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: .*_rebuild_tensor_v2"):
            load_checkpoint(evil)
        assert rebuild.__defaults__ == defaults
        assert torch.equal(load_checkpoint(clean)["w"], torch.ones(2))
    finally:
        rebuild.__defaults__ = defaults


def test_2_build_cannot_reach_the_legacy_source_patch_writer(tmp_path, monkeypatch):
    """In the legacy format a BUILD that sets `dump_patches` and `__name__` on an allowed function makes torch's
    source check write `<__name__>.patch`, here one folder up from the working folder (it did, before the fix).
    Now the format check refuses the file before any BUILD; the BUILD check would refuse it too."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    function = copyreg._reconstructor
    name = function.__name__

    def emit(pickler):
        pickler.write(global_op("copyreg", "_reconstructor"))
        pickler.save(({"dump_patches": True}, {"__name__": "../escaped"}))
        pickler.write(pickle.BUILD + pickle.POP)
        same_function = Inject(lambda p: p.write(global_op("copyreg", "_reconstructor")))
        pickler.save(("module", same_function, "copyreg.py", "changed\nsource\n"), save_persistent_id=False)
        pickler.write(pickle.BINPERSID)

    path = save_injected({"model": {}, "x": Inject(emit)}, tmp_path / "patching.pth", legacy=True)
    try:
        with pytest.raises((CheckpointError, UnsafeCheckpointError), match=r"patching\.pth"):
            load_checkpoint(path)
    finally:
        function.__name__ = name
        vars(function).pop("dump_patches", None)
    assert not (tmp_path / "escaped.patch").exists() and not list(work.iterdir())


def test_2_build_on_a_published_config_class_is_refused(tmp_path):
    """Our data-only config classes are allowed globals; a BUILD on the class itself is refused. Before the fix this
    chain did not work either: the C unpickler called the class's own `__setstate__` unbound (a TypeError)."""
    path = save_injected(
        {"config": build_on("config", "Config_MBM_fMRI", (None, {"to_dict": None}))}, tmp_path / "cls.pth"
    )
    with pytest.raises(UnsafeCheckpointError, match=r"cls\.pth: .*Config_MBM_fMRI"):
        load_checkpoint(path)


# ---- 3. the metric networks' weights load as plain weights ---------------------------------------------------------


def _fid_weights_url() -> str:
    return pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3").URL_INCEPTION_V3


NETS = {  # name -> (the URL whose cached file the loader reads, the loader)
    "alexnet": (
        lambda: __import__("torchvision").models.AlexNet_Weights.IMAGENET1K_V1.url,
        lambda: feature_nets.load_feature_net("alexnet"),
    ),
    "lpips": (
        lambda: __import__("torchvision").models.AlexNet_Weights.DEFAULT.url,
        lambda: feature_nets.load_lpips_alex(),
    ),
    "fid (torch-fidelity)": (_fid_weights_url, lambda: feature_nets.load_fid_metric(None)),
}


@pytest.mark.parametrize("net", NETS)
def test_3_tampered_cached_weights_run_nothing(net, tmp_path, monkeypatch):
    """torchvision's and torch-fidelity's loaders call torch.load with weights_only=False on the cached file."""
    pytest.importorskip("torchmetrics")
    url, load = NETS[net]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    marker = tmp_path / "pwned"
    cached = feature_nets.cached_weights_path(url())
    cached.parent.mkdir(parents=True)
    torch.save({"weight": Pwn(marker)}, cached)
    with pytest.raises(UnsafeCheckpointError, match=rf"{cached.name}: refused"):
        load()
    assert not marker.exists()


@pytest.mark.parametrize("net", ["alexnet", "lpips"])
def test_3_plain_cached_weights_still_load(net, tmp_path, monkeypatch):
    import torchvision

    pytest.importorskip("torchmetrics")
    url, load = NETS[net]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = feature_nets.cached_weights_path(url())
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), cached)
    assert load() is not None and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# ---- 4. a classifier file names a timm architecture, nothing more ---------------------------------------------------


def timm_classifier_file(path: Path, name: str, model_args: dict) -> Path:
    spec = {
        "format": "mindvis-classifier/1",
        "timm_model": name,
        "model_args": model_args,
        "state_dict": {},
        "input_size": 16,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    return save_checkpoint(spec, path)


def touching(marker: Path):
    """A stand-in for a timm function that reaches the network or the disk: it leaves the marker, then fails."""

    def reached(*args, **kwargs):
        marker.touch()
        raise RuntimeError("reached")

    return reached


@pytest.mark.parametrize("name", ["hf-hub:timm/resnet18.a1_in1k", "local-dir:/tmp"])
def test_4_timm_source_prefix_reaches_nothing(name, tmp_path, monkeypatch):
    """`hf-hub:` makes timm download a config even with pretrained=False; `local-dir:` reads any folder."""
    import timm.models._factory as factory

    from classifier_file import load_classifier_file

    marker = tmp_path / "reached"
    for fn in ("load_model_config_from_hf", "load_model_config_from_path"):
        monkeypatch.setattr(factory, fn, touching(marker))
    path = timm_classifier_file(tmp_path / "clf.pth", name, {})
    with pytest.raises(CheckpointError, match=r"clf\.pth: .*timm_model"):
        load_classifier_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("option", ["checkpoint_path", "cache_dir", "pretrained_cfg_overlay"])
def test_4_model_args_cannot_pass_create_model_options(option, tmp_path, monkeypatch):
    """`model_args` go to timm.create_model, whose own options load a checkpoint or point at a cache."""
    import timm.models._factory as factory

    from classifier_file import load_classifier_file

    marker = tmp_path / "reached"
    monkeypatch.setattr(factory, "load_checkpoint", touching(marker))
    path = timm_classifier_file(tmp_path / "clf.pth", "test_resnet", {"num_classes": 3, option: str(tmp_path)})
    with pytest.raises(CheckpointError, match=rf"clf\.pth: .*model_args.*{option}"):
        load_classifier_file(path)
    assert not marker.exists()


def test_4_plain_timm_architecture_still_loads(tmp_path):
    import timm

    from classifier_file import load_classifier_file

    model = timm.create_model("test_resnet", num_classes=3)
    spec = {
        "format": "mindvis-classifier/1",
        "timm_model": "test_resnet",
        "model_args": {"num_classes": 3},
        "state_dict": model.state_dict(),
        "input_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    loaded, _ = load_classifier_file(save_checkpoint(spec, tmp_path / "clf.pth"))
    assert loaded.num_classes == 3


# ---- 5. an LDM config.yaml names no weights file and pulls in nothing ----------------------------------------------


def ldm_folder(tmp_path: Path, edit) -> Path:
    """A label2img folder whose config.yaml is the reference one after `edit(model section)`."""
    from conftest import REFERENCE_DIR

    model = json.loads((REFERENCE_DIR / "ldm.json").read_text())["model"]
    edit(model)
    write(tmp_path / "ldm" / "config.yaml", yaml.safe_dump({"model": model}))
    return tmp_path / "ldm"


def test_5_first_stage_ckpt_path_is_not_followed(tmp_path, monkeypatch):
    """`first_stage_config.params.ckpt_path` loaded any file into the first stage, non-strictly."""
    import dc_ldm.models.autoencoder as autoencoder
    from dc_ldm.ldm_for_fmri import build_ldm_for_fmri

    marker = tmp_path / "reached"
    monkeypatch.setattr(autoencoder, "load_checkpoint", touching(marker))
    other = save_checkpoint({"state_dict": {}}, tmp_path / "elsewhere.ckpt")
    folder = ldm_folder(tmp_path, lambda m: m["params"]["first_stage_config"]["params"].update(ckpt_path=str(other)))
    build_ldm_for_fmri(folder, MAE, 256, load_ldm_weights=False)
    assert not marker.exists()


def test_5_ckpt_path_in_any_config_section_is_not_followed(tmp_path, monkeypatch):
    """The same through a config section stored in a checkpoint (the demo's vq.pth keeps one)."""
    import dc_ldm.models.autoencoder as autoencoder
    from conftest import REFERENCE_DIR
    from dc_ldm.util import instantiate_from_config

    marker = tmp_path / "reached"
    monkeypatch.setattr(autoencoder, "load_checkpoint", touching(marker))
    section = json.loads((REFERENCE_DIR / "ldm.json").read_text())["model"]["params"]["first_stage_config"]
    section["params"]["ckpt_path"] = str(tmp_path / "elsewhere.ckpt")
    instantiate_from_config(section)
    assert not marker.exists()


def test_5_interpolation_is_refused(tmp_path, monkeypatch):
    """`${oc.env:...}` pulled an environment variable into a parameter."""
    from dc_ldm.util import load_ldm_config
    from errors import UserError

    monkeypatch.setenv("MINDVIS_SECRET", "from the environment")
    folder = ldm_folder(tmp_path, lambda m: m["params"].update(monitor="${oc.env:MINDVIS_SECRET}"))
    with pytest.raises(UserError, match=r"config\.yaml: key 'model\.params\.monitor'.*\$\{"):
        load_ldm_config(folder / "config.yaml")


# ---- 6. --overwrite deletes only the simulator's files inside its folder ------------------------------------------


@pytest.fixture(scope="module")
def simulation(tmp_path_factory) -> Path:
    from demo.simulation.simulate import make_synthetic_data

    return make_synthetic_data(tmp_path_factory.mktemp("sim") / "tiny", size="tiny", seed=0)


def _list_in_marker(out: Path, entry: str) -> None:
    info = json.loads((out / "simulation.json").read_text())
    (out / "simulation.json").write_text(json.dumps({**info, "files": [*info["files"], entry]}))


def _dotdot(out: Path) -> Path:
    _list_in_marker(out, "../victim.txt")
    return write(out.parent / "victim.txt", "a user's file")


def _absolute(out: Path) -> Path:
    victim = write(out.parent / "victim.txt", "a user's file")
    _list_in_marker(out, str(victim))
    return victim


def _linked_folder(out: Path) -> Path:
    """HCP/ is a link to the user's folder; simulation.json lists the user's file as if it were one of ours."""
    victim = write(out.parent / "mine" / "npz" / "victim.txt", "a user's file")
    shutil.rmtree(out / "HCP")
    (out / "HCP").symlink_to(victim.parent.parent)
    _list_in_marker(out, "HCP/npz/victim.txt")
    return victim


@pytest.mark.parametrize("hostile", [_dotdot, _absolute, _linked_folder], ids=["../", "absolute", "linked folder"])
def test_6_overwrite_never_deletes_outside_the_output_folder(hostile, simulation, tmp_path):
    from demo.simulation.simulate import SimulationExistsError, make_synthetic_data

    out = Path(shutil.copytree(simulation, tmp_path / "sim" / "tiny"))
    victim = hostile(out)
    with pytest.raises(SimulationExistsError, match=r"simulation\.json lists .* outside|HCP is a link"):
        make_synthetic_data(out, size="tiny", overwrite=True)
    assert victim.read_text() == "a user's file"
    assert (out / "Kamitani" / "npz" / "sbj_1.npz").is_file()  # refused before deleting anything


# ---- 7. --resume continues only a run folder this project wrote ---------------------------------------------------


@pytest.fixture(scope="module")
def a1_killed(simulation, tmp_path_factory) -> Path:
    """A Stage A1 run killed after its first epoch: config.yaml, log.txt, metrics.jsonl, checkpoint.pth (epoch 0)."""
    import stageA1_mbm_pretrain as a1

    out = tmp_path_factory.mktemp("a1")
    with pytest.MonkeyPatch.context() as monkeypatch, pytest.raises(Killed):
        kill_at(monkeypatch, 1, a1)
        a1.main(a1_config(simulation, out))
    return next(out.glob("stageA1/*"))


def _users_file(run: Path, folder: Path) -> Path:
    """A user's folder holding the run's checkpoint under another name, a config.yaml and a hidden .tmp file."""
    shutil.copy(run / "checkpoint.pth", write(folder / "config.yaml", "my: settings\n").parent / "model.pth")
    write(folder / ".draft.tmp", "a user's file")
    return folder / "model.pth"


def _folder_without_config(run: Path, folder: Path) -> Path:
    shutil.copy(run / "checkpoint.pth", write(folder / ".draft.tmp", "a user's file").parent / "checkpoint.pth")
    write(folder / "config.yaml.bak", "my: settings\n")
    return folder


def _linked_config(run: Path, folder: Path) -> Path:
    """A copy of the run whose config.yaml is a link to a user's file (with the run's own settings in it)."""
    shutil.copytree(run, folder)
    users = write(folder.parent / "my_config.yaml", (run / "config.yaml").read_text())
    (folder / "config.yaml").unlink()
    (folder / "config.yaml").symlink_to(users)
    write(folder / ".draft.tmp", "a user's file")
    return folder


@pytest.mark.parametrize(
    "hostile",
    [_users_file, _folder_without_config, _linked_config],
    ids=["another file", "no config.yaml", "linked config.yaml"],
)
def test_7_resume_refuses_a_folder_it_did_not_write(hostile, a1_killed, simulation, tmp_path, monkeypatch):
    import stageA1_mbm_pretrain as a1

    kill_at(monkeypatch, 1, a1)  # where the resumed run starts: after it has written into its folder
    resume = hostile(a1_killed, tmp_path / "mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises((CheckpointError, UserError), match=r"--resume .*mine"):
        a1.main(a1_config(simulation, tmp_path / "out", resume=str(resume)))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_7_resume_removes_only_its_own_temporaries(a1_killed, simulation, tmp_path, monkeypatch):
    """Resuming our run keeps a user's hidden .tmp file beside it (only `.checkpoint.pth.*.tmp` are ours)."""
    import stageA1_mbm_pretrain as a1

    kill_at(monkeypatch, 1, a1)  # where the resumed run starts: after it has written into its folder
    run = Path(shutil.copytree(a1_killed, tmp_path / "run"))
    mine = write(run / ".draft.tmp", "a user's file")
    with pytest.raises(Killed):
        a1.main(a1_config(simulation, tmp_path / "out", resume=str(run)))
    assert mine.read_text() == "a user's file"


# ---- 8. results are written beside what we did not write, never over it ---------------------------------------------


def test_8_evaluate_keeps_the_metrics_of_an_existing_folder(tmp_path, capsys, monkeypatch):
    """`evaluate.py --out DIR` replaced DIR/metrics.json and metrics.png silently."""
    import evaluate
    from errors import run_main

    rng = np.random.default_rng(0)
    np.save(tmp_path / "gt.npy", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    np.save(tmp_path / "recon.npy", rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "results"
    mine = write(out / "metrics.json", '{"mine": 1}')
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "evaluate.py",
            "--recon",
            str(tmp_path / "recon.npy"),
            "--gt",
            str(tmp_path / "gt.npy"),
            "--metrics",
            "mse",
            "--out",
            str(out),
        ],
    )
    monkeypatch.delenv("MINDVIS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--out" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert mine.read_text() == '{"mine": 1}' and not (out / "metrics.png").exists()


def test_8_demo_step_never_deletes_a_result_it_did_not_stamp(tmp_path):
    """A step's target without the demo's recipe stamp beside it (a user's file) was deleted and remade."""
    from demo.steps import Steps

    mine = write(tmp_path / "results" / "demo" / "tiny" / "fmri_encoder_A1.pth", "a user's file")
    ran = []
    with pytest.raises(UserError, match=r"fmri_encoder_A1\.pth.*recipe\.json"):
        Steps()("stage A1", mine, {"flags": {}}, lambda: ran.append(1))
    assert mine.read_text() == "a user's file" and not ran


def test_8_demo_stage_run_never_deletes_a_folder_it_did_not_stamp(tmp_path):
    """`run_stage` removed its output folder (a failed earlier attempt) whoever had put it there."""
    from demo.steps import run_stage

    mine = write(tmp_path / "runs" / "a1" / "notes.txt", "a user's file")
    with pytest.raises(UserError, match=r"a1.*recipe\.json"):
        run_stage("stageA1_mbm_pretrain.py", {"num_epoch": 0}, mine.parent)
    assert mine.read_text() == "a user's file"


# ---- 9. paths and subject names stored in a file stay below --root_path --------------------------------------------


def gen_eval_on(world: Path, tmp_path: Path, checkpoint: Path):
    """gen_eval of `checkpoint` on world's data, two items, one sample of 4 steps, as a function to call."""
    import gen_eval
    from config import GenEvalConfig

    cfg = GenEvalConfig(
        checkpoint=str(checkpoint),
        root_path=str(world),
        kam_path=str(world / "data/Kamitani/npz"),
        output_path=str(tmp_path / "o"),
        num_samples=1,
        ddim_steps=4,
        limit=2,
        metrics=["pcc"],
    )
    return lambda: gen_eval.main(cfg)


def _stored(world: Path, tmp: Path, **values) -> Path:
    """world's finetuned.pth with config entries replaced by `values`."""
    ckpt = load_checkpoint(world / "finetuned.pth")
    ckpt["config"] = {**vars(ckpt["config"]), **values}
    return save_checkpoint(ckpt, tmp / "stored.pth")


@pytest.mark.parametrize(
    "entry, value, message",
    [
        ("pretrain_gm_path", "../{root}_ldm", r"pretrain_gm_path '\.\./.*' leads outside --root_path"),
        ("kam_subs", ["../npz/sbj_3"], r"kam_subs: subject '\.\./npz/sbj_3'.*letters, digits"),
    ],
    ids=["relative path", "subject name"],
)
def test_9_stored_values_stay_below_root_path(entry, value, message, world, tmp_path, capsys, monkeypatch):
    """A stored `../` path or subject name escaped --root_path (both resolved to files that exist here)."""

    if entry == "pretrain_gm_path":
        shutil.copytree(world / "ldm", world.parent / f"{world.name}_ldm", dirs_exist_ok=True)
        value = value.format(root=world.name)
    path = _stored(world, tmp_path, **{entry: value})
    code, err = fail(gen_eval_on(world, tmp_path, path), capsys, monkeypatch)
    assert code == 1 and "stored.pth" in err and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_9_subject_names_are_checked_wherever_they_come_from(world):
    from readers.files import DataFormatError
    from readers.god import create_god_dataset

    with pytest.raises(DataFormatError, match=r"subject '\.\./npz/sbj_3'"):
        create_god_dataset(world / "data/Kamitani/npz", subjects=["../npz/sbj_3"])


# ---- 10. Stage B resumes only with its own learning rate ------------------------------------------------------------


def test_10_stage_b_resume_refuses_a_new_learning_rate(world, tmp_path, monkeypatch):
    """Stage B's resume check compared no field: `--resume RUN --lr X` changed the rate mid-run, silently."""
    import stageB_ldm_finetune as stage_b
    from config import StageBConfig
    from config_engine import ConfigError

    def config(**overrides) -> StageBConfig:
        return StageBConfig(
            **{
                **dict(
                    root_path=str(world),
                    output_path=str(tmp_path),
                    img_size=32,
                    batch_size=8,
                    kam_path=str(world / "data/Kamitani/npz"),
                    pretrain_gm_path=str(world / "ldm"),
                    pretrain_mbm_path=str(world / "fmri_encoder.pth"),
                    num_epoch=2,
                    val_every=1,
                    num_val_items=2,
                    num_samples=1,
                    ddim_steps=4,
                ),
                **overrides,
            }
        )

    kill_at(monkeypatch, 1, stage_b)
    with pytest.raises(Killed):
        stage_b.main(config())
    (run,) = (tmp_path / "stageB").iterdir()
    with pytest.raises(ConfigError, match=r"schedule would change \(lr 5\.3e-05 -> 0\.001\).*--allow_new_schedule"):
        stage_b.main(config(resume=str(run), lr=1e-3))
    with pytest.raises(Killed):  # asked for: resumed
        stage_b.main(config(resume=str(run), lr=1e-3, allow_new_schedule=True))


# ---- 11. a YAML value of the wrong type is refused, not converted --------------------------------------------------


@pytest.mark.parametrize(
    "line, field, expected",
    [
        ("lr: true", "lr", "a number"),
        ("min_lr: false", "min_lr", "a number"),
        ("hcp_path: [a, b]", "hcp_path", "text"),
        ("wandb_project: {name: x}", "wandb_project", "text"),
    ],
)
def test_11_yaml_values_keep_their_type(line, field, expected, tmp_path, capsys):
    """`lr: true` became 1.0 and a list became the text of the list."""
    from config import StageA1Config
    from config_engine import parse_config

    path = write(tmp_path / "run.yaml", line + "\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_config(StageA1Config, ["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"run.yaml: {field} must be {expected}" in err, err


def test_11_numbers_yaml_reads_as_text_still_load(tmp_path):
    """PyYAML reads `1e-4` (no dot) as text: a number written so is still a number."""
    from config import StageA1Config
    from config_engine import parse_config

    cfg = parse_config(StageA1Config, ["--config", str(write(tmp_path / "run.yaml", "lr: 1e-4\nnum_epoch: 300\n"))])
    assert cfg.lr == 1e-4 and cfg.num_epoch == 300
