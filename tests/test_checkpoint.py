"""Safe checkpoint loading: published config objects load, anything that would run code is refused."""

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from checkpoint import as_config_dict, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from checkpoint_layouts import read_selection
from errors import CheckpointError, UnsafeCheckpointError
from safe_pickle import load_pickled_npy


def _published_config_module(tmp_name: str = "config"):
    """A throw-away module named like the original code's `config`, holding a class of the published name."""
    mod = types.ModuleType(tmp_name)

    class Config_MBM_fMRI:  # noqa: N801 - the published class name
        def __init__(self):
            self.lr = 2.5e-4
            self.mask_ratio = 0.75
            self.focus_range = None
            self.roi = "VC"

    Config_MBM_fMRI.__module__ = tmp_name
    Config_MBM_fMRI.__qualname__ = "Config_MBM_fMRI"
    mod.Config_MBM_fMRI = Config_MBM_fMRI
    return mod


def test_published_layout_loads_with_config_object(tmp_path, monkeypatch):
    mod = _published_config_module()
    monkeypatch.setitem(sys.modules, "config", mod)
    path = tmp_path / "fmri_encoder.pth"
    torch.save(
        {"model": {"w": torch.arange(4.0)}, "epoch": 3, "config": mod.Config_MBM_fMRI(), "np": np.arange(3)},
        path,
    )
    monkeypatch.delitem(sys.modules, "config")  # loading must not need the original class

    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["model"]["w"], torch.arange(4.0))
    assert ckpt["epoch"] == 3
    np.testing.assert_array_equal(ckpt["np"], np.arange(3))
    cfg = ckpt["config"]
    assert type(cfg).__module__ == "config" and type(cfg).__qualname__ == "Config_MBM_fMRI"  # ours, data only
    assert as_config_dict(cfg) == {"lr": 2.5e-4, "mask_ratio": 0.75, "focus_range": None, "roi": "VC"}


class _Exploit:
    """Unpickling this would call os.system."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mindvis_pwned",))


def test_code_executing_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "config": _Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*(os|posix)\.system"):
        load_checkpoint(path)


def test_raw_pickle_is_refused_before_torch_reads_it(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(types.SimpleNamespace(x=1)))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pkl: refused: a raw pickle"):
        load_checkpoint(path)
    torch.save({"x": types.SimpleNamespace(x=1)}, path)  # the same object in a torch file: refused by name
    with pytest.raises(UnsafeCheckpointError, match="types.SimpleNamespace"):
        load_checkpoint(path)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    good = save_checkpoint({"a": torch.ones(1000)}, tmp_path / "good.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"bad\.pth"):
        load_checkpoint(bad)


def test_atomic_save_leaves_no_temporary_files_and_keeps_old_file_on_failure(tmp_path):
    path = save_checkpoint({"v": 1}, tmp_path / "ckpt.pth")
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint({"v": lambda: 0}, path)
    assert load_checkpoint(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    state = get_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pth")
    expected = (np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (np.random.rand(), torch.rand(3))
    assert expected[0] == got[0] and torch.equal(expected[1], got[1])


class _Pwn:
    """Unpickling it runs a shell command: what a malicious data file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickled_npy_reads_arrays_and_refuses_code(tmp_path):
    images = {"a.jpg": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "b.png": np.zeros((2, 2, 3), np.uint8)}
    np.save(tmp_path / "img_dict.npy", images, allow_pickle=True)
    loaded = load_pickled_npy(tmp_path / "img_dict.npy")
    assert loaded.keys() == images.keys() and all(np.array_equal(loaded[k], images[k]) for k in images)
    np.save(tmp_path / "plain.npy", np.ones((3, 2)))
    assert np.array_equal(load_pickled_npy(tmp_path / "plain.npy"), np.ones((3, 2)))

    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array({"a.jpg": _Pwn(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.npy: refused to load global '(os|posix)\.system'"):
        load_pickled_npy(tmp_path / "evil.npy")
    assert not marker.exists()
    (tmp_path / "cut.npy").write_bytes((tmp_path / "img_dict.npy").read_bytes()[:150])
    with pytest.raises(CheckpointError, match=r"cut\.npy: not a readable \.npy file"):
        load_pickled_npy(tmp_path / "cut.npy")


def test_stage_b_selection_is_read_typed():
    assert read_selection({"epoch": 3}, "c.pth") is None  # a run that has not validated yet
    assert read_selection({"best": 0.4, "select_by": "ssim"}, "c.pth") == (0.4, "ssim")
    assert read_selection({"best": 1}, "c.pth") == (1.0, "top-1-class")  # older files carry no select_by
    for bad in ({"best": "0.4"}, {"best": True}, {"best": 0.4, "select_by": ["ssim"]}):
        with pytest.raises(CheckpointError, match=r"c\.pth: its 'best'"):
            read_selection(bad, "c.pth")
