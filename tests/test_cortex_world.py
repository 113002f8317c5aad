"""The cortex-shaped simulated brain: shared organisation in degrees, smooth tunings and noise, voxel orders, a resting
state partly evoked-like, held-out HCP subjects; and the classic brain left exactly as it was."""

import json
import zlib

import numpy as np
import pytest

from demo.simulation import brain, cortex, writers
from demo.simulation.simulate import SimulationExistsError, make_synthetic_data, write_heldout_hcp
from demo.simulation.spec import SIZES


def _rng_for(seed: int = 0):
    return lambda *tags: np.random.default_rng([seed, *(zlib.crc32(str(t).encode()) for t in tags)])


def _pop(subject: int, sharing: str = "realistic", order: str = "template", blocks=(("V1", 400), ("LOC", 200))):
    template = cortex.Template(_rng_for(), embed_dim=16)
    rng = np.random.default_rng(subject)
    return cortex.population(template, rng, ("god", subject), list(blocks), 0.3, cortex.SHARING[sharing], order)


def _neighbour_r(x: np.ndarray) -> float:
    """Mean correlation of consecutive voxels (columns) of x (T, V)."""
    z = (x - x.mean(0)) / x.std(0)
    return float((z[:, :-1] * z[:, 1:]).mean())


def _row_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over voxels of the correlation of two subjects' weight vectors (rows) at the same position."""
    a = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    b = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    return float((a * b).mean())


def test_sharing_sets_how_alike_two_subjects_tunings_are():
    alike, moved = {}, {}
    for sharing in ("high", "realistic", "none"):
        a, b = _pop(1, sharing), _pop(2, sharing)  # the same grid: voxel k sits at the same sheet position
        alike[sharing] = _row_corr(a.sem_weights, b.sem_weights)
        v1 = a.roi == "V1"
        moved[sharing] = np.linalg.norm(
            np.log(np.linalg.norm(a.centre[v1], axis=1) / np.linalg.norm(b.centre[v1], axis=1))
        )
    assert moved["high"] < moved["realistic"] < moved["none"], moved  # retinotopy: the same map, moved by the warp
    assert alike["high"] > 0.8, alike
    assert 0.3 < alike["realistic"] < alike["high"], alike
    assert abs(alike["none"]) < 0.1, alike


def test_neighbouring_voxels_respond_alike_unless_listed_at_random():
    for order, low, high in (("raster", 0.2, 1.0), ("template", 0.2, 1.0), ("random", -0.1, 0.1)):
        pop = _pop(1, order=order)
        noise = pop.smooth_noise(np.random.default_rng(0).standard_normal((3000, len(pop.roi))))
        assert noise.std(0) == pytest.approx(np.ones(len(pop.roi)), abs=0.06)  # unit variance, edges included
        v1 = pop.roi == "V1"
        assert low < _neighbour_r(noise[:, v1]) < high, order
        assert low < _row_corr(pop.sem_weights[v1][:-1], pop.sem_weights[v1][1:]) < high, order


def test_retinotopy_follows_the_sheet_and_the_hemifield():
    pop = _pop(1, "high", blocks=(("LHV1", 300), ("RHV1", 300)))
    left, right = pop.roi == "LHV1", pop.roi == "RHV1"
    assert (pop.centre[left, 0] > 0).all() and (pop.centre[right, 0] < 0).all()  # contralateral hemifields
    ecc = np.linalg.norm(pop.centre, axis=1)
    assert ecc.min() >= 0.04 * 0.9 and ecc.max() <= 1.2 * 1.2
    assert np.isnan(_pop(1).centre[_pop(1).roi == "LOC"]).all()  # higher areas have no receptive field here


def test_resting_state_resembles_evoked_activity_by_its_evoked_share():
    """The voxel-by-voxel covariance of the resting state matches that of the stimulus drive better with a larger
    evoked-like share."""
    pop = _pop(1, blocks=(("V1", 150), ("V4", 100)))
    rng = np.random.default_rng(0)
    feats = np.kron(rng.normal(size=(400, 5, 8, 8)), np.ones((4, 4))).astype(np.float32)
    drive = brain.stimulus_drive_from(pop, feats, lambda g: rng.normal(size=(400, 16)), np.ones(400, bool))
    evoked = np.corrcoef(drive.T)[np.triu_indices(len(pop.roi), 1)]
    match = {}
    for share in (0.0, 0.8):
        rest = cortex.resting_state(pop, np.random.default_rng(1), 1500, 0.2, share, 16)
        match[share] = np.corrcoef(evoked, np.corrcoef(rest.T)[np.triu_indices(len(pop.roi), 1)])[0, 1]
    assert match[0.8] > match[0.0] + 0.2, match


def test_the_classic_brain_is_unchanged(tmp_path):
    """Today's numbers stay reproducible: the classic world's arrays are the ones the demo was measured on."""
    out = make_synthetic_data(tmp_path / "tiny", size="tiny", seed=0)
    with np.load(out / "Kamitani" / "npz" / "sbj_1.npz") as f:
        god = f["arr_0"]
    with np.load(sorted((out / "HCP" / "npz").iterdir())[0] / writers.HCP_FILE) as f:
        hcp = f["V1"]
    np.testing.assert_allclose(god[:2, :4], CLASSIC_GOD, rtol=1e-5)
    np.testing.assert_allclose(hcp[:2, :4], CLASSIC_HCP, rtol=1e-5)


def test_cortex_world_writes_the_published_layouts_and_held_out_hcp_subjects(tmp_path):
    out = make_synthetic_data(tmp_path / "cx", size="cortex-tiny", seed=0)
    settings = json.loads((out / "simulation.json").read_text())["settings"]
    assert settings["brain"] == "cortex" and settings["sharing"] == "realistic"
    with np.load(out / "Kamitani" / "npz" / "sbj_3.npz") as f:
        assert f["arr_0"].shape[0] == 120 and f["VC"].dtype == bool
    trained = sorted(p.name for p in (out / "HCP" / "npz").iterdir())
    held = write_heldout_hcp(out, tmp_path / "held", 2)
    names = sorted(p.name for p in held.iterdir())
    assert len(names) == 2 and not set(names) & set(trained)
    with (
        np.load(held / names[0] / writers.HCP_FILE) as f,
        np.load(out / "HCP/npz" / trained[0] / writers.HCP_FILE) as g,
    ):
        assert {k: f[k].shape for k in f.files} == {k: g[k].shape for k in g.files}  # the same surface grid
        assert not np.allclose(f["V1"], g["V1"])
    again = write_heldout_hcp(out, tmp_path / "held2", 2)
    with np.load(again / names[0] / writers.HCP_FILE) as f, np.load(held / names[0] / writers.HCP_FILE) as g:
        np.testing.assert_array_equal(f["V1"], g["V1"])  # the same world gives the same held-out subjects
    with pytest.raises(SimulationExistsError, match="already holds files"):
        write_heldout_hcp(out, held, 2)


@pytest.mark.parametrize("knob,value", [("brain", "brainy"), ("sharing", "some"), ("voxel_order", "alphabetical")])
def test_bad_cortex_settings_are_refused(knob, value):
    with pytest.raises(ValueError, match=knob):
        SIZES["cortex"].with_overrides(**{knob: value})


# the first values of the classic tiny world (seed 0) as measured before the cortex world existed (commit 997af51)
CLASSIC_GOD = [[-0.60767466, -0.50539470, 1.73623335, -0.44184354], [0.56520426, 0.30939549, 1.22455704, -0.14187041]]
CLASSIC_HCP = [[-0.31232420, 0.03550865, -1.61950147, 1.40382147], [0.28022316, 0.26065487, -0.14593096, 0.52296937]]
