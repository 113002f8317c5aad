"""Write the simulated world in the published layouts (docs/formats.md): GOD/Kamitani, BOLD5000, HCP and NSD (both
MindEye releases)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demo.simulation import brain, cortex, stimuli
from demo.simulation.spec import SimSpec

log = logging.getLogger("mindvis.simulation")
Rng = Callable[..., np.random.Generator]  # rng_for(*tags): an independent, seeded stream per tag tuple

# published-scale voxel counts (voxel_scale 1); subjects vary by about +-12%
GOD_VOXELS = {
    "V1": 860,
    "V2": 760,
    "V3": 620,
    "V4": 360,
    "LOC": 820,
    "FFA": 400,
    "PPA": 460,
    "HVC": 380,
    "other": 1400,
}  # HVC: the rest of the HVC region; other: voxels outside visual cortex
HCP_VOXELS = {"V1": 1150, "V2": 1050, "V3": 880, "V4": 560}
BOLD_VOXELS = {"EarlyVis": (210, 285), "LOC": (152, 190), "OPA": (101, 187), "PPA": (131, 200), "RSC": (86, 143)}
BOLD_FILE = "{sub}_GLMbetas-TYPED-FITHRF-GLMDENOISE-RR_allses_{hemi}{roi}.npy"
HCP_FILE = "HCP_visual_voxel.npz"


def _bump_until(counts: dict[str, int], groups: dict[str, list[str]], taken: set[int], distinct: str) -> None:
    """Add voxels until no ROI or ROI group holds a multiple of 16 and group `distinct` differs from `taken`."""
    for _ in range(1000):
        sums = {g: sum(counts[r] for r in members) for g, members in groups.items()}
        bad = [r for r in counts if counts[r] % 16 == 0]
        bad += [groups[g][0] for g, n in sums.items() if n % 16 == 0 or (g == distinct and n in taken)]
        if not bad:
            taken.add(sums[distinct])
            return
        counts[bad[0]] += 1
    raise RuntimeError("could not choose voxel counts")  # unreachable for any sane scale


def _pieces(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """Split n into k positive parts at random."""
    cuts = np.sort(rng.choice(np.arange(1, n), k - 1, replace=False))
    return np.diff(np.r_[0, cuts, n]).tolist()


def population(
    spec: SimSpec, rng_for: Rng, rng: np.random.Generator, subject: tuple, blocks: list[tuple[str, int]]
) -> brain.Population:
    """A subject's voxels in the ROI blocks `blocks`: drawn on their own (`brain classic`) or read off the world's
    cortex sheets (`brain cortex`, demo/simulation/cortex.py); `subject` tags the subject's own draws."""
    if spec.brain == "cortex":
        template = cortex.Template(rng_for, spec.embed_dim)
        sharing = cortex.SHARING[spec.sharing]
        return cortex.population(template, rng, subject, blocks, spec.snr, sharing, spec.voxel_order)
    return brain.build_population(rng, blocks, spec.snr, spec.embed_dim)


# ----------------------------------------------------------------------------------------------------
# GOD / Kamitani
# ----------------------------------------------------------------------------------------------------


def god_blocks(rng: np.random.Generator, scale: float, taken: set[int]) -> list[tuple[str, int]]:
    """One GOD subject's ROI blocks along the voxel axis; non-visual voxels sit in three runs between them."""
    n = {roi: max(8, round(base * scale * rng.uniform(0.88, 1.12))) for roi, base in GOD_VOXELS.items()}
    visual = ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "HVC"]
    groups = {
        "LVC": ["V1", "V2", "V3"],
        "HVCall": ["HVC", "LOC", "FFA", "PPA"],
        "VC": ["V4", *visual],
        "all": ["other", *visual],
    }
    _bump_until(n, groups, taken, "VC")
    a, b, c = _pieces(rng, n["other"], 3)
    return [
        ("V1", n["V1"]),
        ("V2", n["V2"]),
        ("V3", n["V3"]),
        ("other", a),
        ("V4", n["V4"]),
        ("LOC", n["LOC"]),
        ("FFA", n["FFA"]),
        ("other", b),
        ("PPA", n["PPA"]),
        ("HVC", n["HVC"]),
        ("other", c),
    ]


def god_masks(roi: np.ndarray) -> dict[str, np.ndarray]:
    """The published ROI masks (V_all,) bool from per-voxel labels (LVC = V1-V3, HVC = LOC+FFA+PPA+rest)."""
    m = {r: roi == r for r in ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA")}
    m["LVC"] = m["V1"] | m["V2"] | m["V3"]
    m["HVC"] = m["LOC"] | m["FFA"] | m["PPA"] | (roi == "HVC")
    m["VC"] = m["LVC"] | m["V4"] | m["HVC"]
    return m


def _wordnet_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct fake WordNet offsets (7 digits, so ids read n0xxxxxxx), sorted like ImageNet's class index."""
    return np.sort(rng.choice(np.arange(1_000_000, 10_000_000), n, replace=False))


def god_categories(spec: SimSpec, rng_for: Rng) -> tuple[stimuli.Categories, np.random.Generator]:
    """The GOD categories in class-index order, and the stream that goes on to draw the rest of the GOD world."""
    rng = rng_for("god", "world")
    return stimuli.sample_categories(rng, spec.train_categories + spec.test_categories, layout=0), rng


def write_god(root: Path, spec: SimSpec, space: brain.SemanticSpace, rng_for: Rng) -> None:
    """Kamitani/npz: sbj_<k>.npz, images_256.npz, imagenet_class_index.json and the two label csv files."""
    root.mkdir(parents=True)
    cats, rng = god_categories(spec, rng_for)
    n_cat = len(cats)
    own = rng.normal(0, 1, (n_cat, spec.embed_dim))  # each category's own part of its embedding
    # classes sorted by WordNet id as in ImageNet; some classes own a second id that their images carry
    numbers = _wordnet_numbers(rng, 2 * n_cat)
    primary, extra = numbers[::2], numbers[1::2]
    has_extra = rng.random(n_cat) < 0.1
    image_wnid = np.where(has_extra, extra, primary)
    is_test = np.zeros(n_cat, dtype=bool)
    is_test[rng.choice(n_cat, spec.test_categories, replace=False)] = True
    names = cats.names()
    index = {
        str(c): [f"n{primary[c]:08d}", *([f"n{extra[c]:08d}"] if has_extra[c] else []), names[c]] for c in range(n_cat)
    }
    (root / "imagenet_class_index.json").write_text(json.dumps(index, indent=0))

    train_cat = np.repeat(np.flatnonzero(~is_test), spec.images_per_category)
    test_cat = np.flatnonzero(is_test)
    category = np.r_[train_cat, test_cat]
    image_no = np.concatenate(
        [
            np.sort(rng.choice(np.arange(1, 20000), spec.images_per_category, replace=False))
            for _ in range(spec.train_categories)
        ]
        + [rng.integers(1, 20000, len(test_cat))]
    )
    rows = [f"{image_wnid[c]}.{k:06d},n{image_wnid[c]:08d}_{k}.JPEG" for c, k in zip(category, image_no, strict=True)]
    n_train = len(train_cat)
    (root / "imagenet_training_label.csv").write_text("\n".join(rows[:n_train]) + "\n")
    (root / "imagenet_testing_label.csv").write_text("\n".join(rows[n_train:]) + "\n")

    log.info("GOD: drawing %d stimuli (%d px)", len(category), spec.image_size)
    images = stimuli.render(cats, stimuli.sample_images(rng, cats, category), spec.image_size)
    np.savez(root / "images_256.npz", train_images=images[:n_train], test_images=images[n_train:])
    feats = brain.low_level_features(images)
    fit = np.arange(len(category)) < n_train

    taken: set[int] = set()
    for k in tqdm(range(1, spec.god_subjects + 1), desc="GOD subjects", disable=not spec.progress):
        rng = rng_for("god", "subject", k)
        pop = population(spec, rng_for, rng, ("god", k), god_blocks(rng, spec.voxel_scale, taken))
        silent = brain.silent_voxels(pop, spec.silent_share, rng_for("god", "silent", k))
        drive = brain.stimulus_drive(
            pop, feats, cats.attrs[category], own[category], space, fit, spec.category_drive, silent
        )
        order = rng.permutation(n_train)  # presentation order of the training images
        shown = np.r_[order, n_train + np.repeat(np.arange(len(test_cat)), spec.test_repeats)]
        x = brain.trial_responses(pop, drive, shown, rng, spec.structured_noise)
        mu, sd = x[:n_train].mean(0), x[:n_train].std(0)
        x = ((x - mu) / sd).astype(np.float32)  # voxels z-scored over the training trials, as preprocessed
        test = x[n_train:]
        np.savez(
            root / f"sbj_{k}.npz",
            arr_0=x[:n_train],
            arr_1=test,
            arr_2=test.reshape(len(test_cat), spec.test_repeats, -1).mean(1),
            arr_3=order.astype(np.int64),
            **god_masks(pop.roi),
        )


# ----------------------------------------------------------------------------------------------------
# BOLD5000
# ----------------------------------------------------------------------------------------------------


def _bold_names(rng: np.random.Generator, cats: stimuli.Categories, category: np.ndarray) -> list[str]:
    """Published-style stimulus names: ImageNet 'n0xxxxxxx_k.JPEG', COCO 'COCO_train2014_<12 digits>.jpg', scenes."""
    wnid = _wordnet_numbers(rng, len(cats))
    coco = rng.choice(np.arange(1, 600_000), len(category), replace=False)
    scene = [n.replace(" on ", " ").replace(" ", "") for n in cats.names()]  # like 'airplanecabin1.jpg'
    counter = np.zeros(len(cats), dtype=int)
    names = []
    for i, c in enumerate(category):
        counter[c] += 1
        if cats.layout[c] == 0:
            names.append(f"n{wnid[c]:08d}_{counter[c]}.JPEG")
        elif cats.layout[c] == 1:
            names.append(f"COCO_train2014_{coco[i]:012d}.jpg")
        else:
            names.append(f"{scene[c]}{counter[c]}.jpg")
    if len(set(names)) != len(names):
        raise RuntimeError("simulated BOLD5000 stimulus names collide")  # a bug, never a user error
    return names


def _presentation(
    rng: np.random.Generator, spec: SimSpec, n_images: int, repeated: np.ndarray, sessions: int
) -> list[list[np.ndarray]]:
    """Image indices per session and run: every image once, repeated ones `bold_repeats` times, shuffled."""
    trials = np.r_[np.setdiff1d(np.arange(n_images), repeated), np.repeat(repeated, spec.bold_repeats)]
    runs = np.array_split(rng.permutation(trials), spec.bold_sessions * spec.bold_runs)
    return [runs[s * spec.bold_runs : (s + 1) * spec.bold_runs] for s in range(sessions)]


def write_bold5000(root: Path, spec: SimSpec, space: brain.SemanticSpace, rng_for: Rng) -> None:
    """BOLD5000: GLMsingle ROI betas per subject and hemisphere, the stimuli dict and presentation lists."""
    betas = root / "BOLD5000_GLMsingle_ROI_betas" / "py"
    stim = root / "BOLD5000_Stimuli"
    for folder in (betas, stim / "Scene_Stimuli" / "Presented_Stimuli", stim / "Image_Labels"):
        folder.mkdir(parents=True)
    rng = rng_for("bold5000", "world")
    layout = rng.choice(3, spec.bold_categories, p=[0.4, 0.4, 0.2])
    cats = stimuli.sample_categories(rng, spec.bold_categories, layout=layout)
    own = rng.normal(0, 1, (len(cats), spec.embed_dim))
    n_images = spec.bold_images + spec.bold_repeated
    category = rng.integers(0, len(cats), n_images)
    names = _bold_names(rng, cats, category)
    log.info("BOLD5000: drawing %d stimuli (%d px)", n_images, spec.image_size)
    images = stimuli.render(cats, stimuli.sample_images(rng, cats, category), spec.image_size)
    np.save(
        stim / "Scene_Stimuli" / "Presented_Stimuli" / "img_dict.npy",
        dict(zip(names, images, strict=True)),
        allow_pickle=True,
    )
    repeated = np.sort(rng.choice(n_images, spec.bold_repeated, replace=False))
    (stim / "Scene_Stimuli" / "repeated_stimuli_113_list.txt").write_text("\n".join(names[i] for i in repeated) + "\n")
    labels = {0: "imagenet_final_labels.txt", 1: "coco_final_labels.txt", 2: "scene_final_labels.txt"}
    cat_names = cats.names()
    for lay, file in labels.items():
        rows = [f"{n}\t{cat_names[c]}" for n, c in zip(names, category, strict=True) if cats.layout[c] == lay]
        (stim / "Image_Labels" / file).write_text("\n".join(rows) + "\n")

    feats = brain.low_level_features(images)
    fit = np.ones(n_images, dtype=bool)
    taken: set[int] = set()
    for k in tqdm(range(1, spec.bold_subjects + 1), desc="BOLD5000 subjects", disable=not spec.progress):
        sub, rng = f"CSI{k}", rng_for("bold5000", "subject", k)
        sessions = spec.bold_sessions if k < 4 else max(1, round(0.6 * spec.bold_sessions))  # CSI4 stopped early
        plan = _presentation(rng, spec, n_images, repeated, sessions)
        seen: set[int] = set()
        for s, runs in enumerate(plan, start=1):
            folder = stim / "Stimuli_Presentation_Lists" / sub / f"{sub}_sess{s:02d}"
            folder.mkdir(parents=True)
            for r, run in enumerate(runs, start=1):
                lines = []
                for i in run:  # a repeated image's later presentations carry the rep_ prefix
                    lines.append(("rep_" if i in seen else "") + names[i])
                    seen.add(int(i))
                (folder / f"{sub}_sess{s:02d}_run{r:02d}.txt").write_text("\n".join(lines) + "\n")
        shown = np.concatenate([run for runs in plan for run in runs])
        counts = {
            (h, roi): max(5, round(n * spec.voxel_scale * rng.uniform(0.85, 1.15)))
            for roi, pair in BOLD_VOXELS.items()
            for h, n in zip(("LH", "RH"), pair, strict=True)
        }
        _bump_until(counts, {"all": list(counts)}, taken, "all")
        pop = population(spec, rng_for, rng, ("bold5000", k), [(h + roi, n) for (h, roi), n in counts.items()])
        silent = brain.silent_voxels(pop, spec.silent_share, rng_for("bold5000", "silent", k))
        drive = brain.stimulus_drive(
            pop, feats, cats.attrs[category], own[category], space, fit, spec.category_drive, silent
        )
        x = brain.trial_responses(pop, drive, shown, rng, spec.structured_noise)
        x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
        start = 0
        for (h, roi), n in counts.items():  # files in the readers' concatenation order: ROI, then LH before RH
            np.save(betas / BOLD_FILE.format(sub=sub, hemi=h, roi=roi), x[:, start : start + n])
            start += n


# ----------------------------------------------------------------------------------------------------
# HCP
# ----------------------------------------------------------------------------------------------------


def write_hcp(root: Path, spec: SimSpec, rng_for: Rng) -> None:
    """HCP/npz/<subject>/HCP_visual_voxel.npz: V1..V4 resting-state series (frames, n_roi_voxels).

    All subjects share one template organisation (as surface data in a common space do), each with
    its receptive fields shifted a little and its own spontaneous activity.
    """
    root.mkdir(parents=True)
    counts = hcp_counts(spec)
    for i in tqdm(range(spec.hcp_subjects), desc="HCP subjects", disable=not spec.progress):
        write_hcp_subject(root / hcp_subject_name(i), spec, rng_for, i, counts)


def hcp_counts(spec: SimSpec) -> dict[str, int]:
    """Voxels per ROI of every HCP subject (surface data in a common space: the same for all)."""
    counts = {roi: max(8, round(n * spec.voxel_scale)) for roi, n in HCP_VOXELS.items()}
    _bump_until(counts, {"VC": list(counts)}, set(), "VC")
    return counts


def hcp_subject_name(i: int) -> str:
    return f"{100206 + 101 * i}"


def write_hcp_subject(folder: Path, spec: SimSpec, rng_for: Rng, i: int, counts: dict[str, int]) -> None:
    """HCP subject number i of the world (any i: subjects past `hcp_subjects` are held out) into `folder`."""
    rng = rng_for("hcp", "subject", i)
    if spec.brain == "cortex":
        pop = population(spec, rng_for, rng, ("hcp", i), list(counts.items()))
        evoked = cortex.SHARING[spec.sharing].rest_evoked
        x = cortex.resting_state(pop, rng, spec.hcp_frames, spec.rest_noise, evoked, spec.embed_dim)
    else:
        template = brain.build_population(rng_for("hcp", "template"), list(counts.items()), spec.snr, spec.embed_dim)
        pop = brain.jittered(template, rng)
        x = brain.resting_state(pop, rng, spec.hcp_frames, spec.rest_noise)
    folder.mkdir(parents=True)
    np.savez(folder / HCP_FILE, **{roi: x[:, pop.roi == roi] for roi in counts})


# ----------------------------------------------------------------------------------------------------
# NSD (the two MindEye releases; readers/nsd.py)
# ----------------------------------------------------------------------------------------------------

NSD_IMAGES = 73_000  # NSD's stimulus indices run over 73k COCO images
NSD_RUN_TRIALS = 63  # NSD's runs hold 62-63 trials
NSD_BEHAV_COLUMNS = 17  # MindEye2's behav.npy: 0 image (73k index), 1 subject, 2 session, 3 run, 4 trial in the
# session, 5 global trial (the betas row), ..., 16 shared1000; -1 where unknown


def nsd_subject_name(k: int) -> str:
    return f"subj{k:02d}"


def write_nsd(root: Path, spec: SimSpec, space: brain.SemanticSpace, rng_for: Rng) -> None:
    """NSD/mindeye1 (webdataset_avg_split shards) and NSD/mindeye2 (HDF5 betas and images, per-session behav
    shards) holding the same simulated subjects: shared test images every subject sees, training images of each
    subject's own, every image shown `nsd_repeats` times in random order over `nsd_sessions` sessions.

    The stimuli are new images of the GOD world's categories (the world's models know them), the voxels those of a
    subject's visual ROIs (nsdgeneral); betas are z-scored per voxel with the training trials' statistics, as
    MindEye2's renormalised release.
    """
    cats, god_rng = god_categories(spec, rng_for)
    own = god_rng.normal(0, 1, (len(cats), spec.embed_dim))  # the GOD world's category embeddings (write_god)
    rng = rng_for("nsd", "world")
    n_test, n_train, n_sub = spec.nsd_test_images, spec.nsd_train_images, spec.nsd_subjects
    n_images = n_test + n_sub * n_train
    coco = rng.choice(NSD_IMAGES, n_images, replace=False)  # images' 73k indices: test first, then per subject
    category = rng.integers(0, len(cats), n_images)
    log.info("NSD: drawing %d stimuli (%d px)", n_images, spec.image_size)
    images = stimuli.render(cats, stimuli.sample_images(rng, cats, category), spec.image_size)
    feats = brain.low_level_features(images)
    me1, me2 = root / "mindeye1", root / "mindeye2"
    _nsd_image_file(me2, coco, images)
    taken: set[int] = set()
    for k in tqdm(range(1, n_sub + 1), desc="NSD subjects", disable=not spec.progress):
        rng = rng_for("nsd", "subject", k)
        seen = np.r_[np.arange(n_test), n_test + (k - 1) * n_train + np.arange(n_train)]  # rows of `images`
        is_test = np.arange(len(seen)) < n_test
        blocks = [b for b in god_blocks(rng, spec.voxel_scale, taken) if b[0] != "other"]  # nsdgeneral: visual
        pop = population(spec, rng_for, rng, ("nsd", k), blocks)
        silent = brain.silent_voxels(pop, spec.silent_share, rng_for("nsd", "silent", k))
        drive = brain.stimulus_drive(
            pop,
            feats[seen],
            cats.attrs[category[seen]],
            own[category[seen]],
            space,
            ~is_test,
            spec.category_drive,
            silent,
        )
        shown = rng.permutation(np.repeat(np.arange(len(seen)), spec.nsd_repeats))  # trials in session order
        x = brain.trial_responses(pop, drive, shown, rng, spec.structured_noise)
        train_trials = ~is_test[shown]
        x = ((x - x[train_trials].mean(0)) / x[train_trials].std(0)).astype(np.float32)
        _write_mindeye2(me2, nsd_subject_name(k), k, spec, x, coco[seen][shown], is_test[shown])
        _write_mindeye1(me1, nsd_subject_name(k), spec, rng, x, shown, coco[seen], images[seen], is_test)


def _nsd_image_file(root: Path, coco: np.ndarray, images: np.ndarray) -> None:
    """coco_images_224_float16.hdf5: 'images' (73000, 3, H, W) float16 in [0, 1]; only the rows of the simulated
    stimuli are written (one chunk per image, so the others take no space)."""
    import h5py

    root.mkdir(parents=True)
    size = images.shape[1]
    with h5py.File(root / "coco_images_224_float16.hdf5", "w") as f:
        data = f.create_dataset("images", (NSD_IMAGES, 3, size, size), np.float16, chunks=(1, 3, size, size))
        order = np.argsort(coco)
        data[coco[order]] = (images[order].transpose(0, 3, 1, 2) / 255.0).astype(np.float16)


def _write_mindeye2(
    root: Path, subject: str, k: int, spec: SimSpec, x: np.ndarray, coco: np.ndarray, is_test: np.ndarray
) -> None:
    """betas_all_<subject>_fp32_renorm.hdf5 ('betas', one row per trial in session order) and wds/<subject>/:
    train/<session>.tar with the session's trials of training images, new_test/0.tar with every shared-image
    trial; one sample per trial holding behav.npy (1, 17) and its neighbours (past_behav, future_behav: the
    session's 15 trials before and after; olds_behav: the image's other presentations)."""
    import h5py

    with h5py.File(root / f"betas_all_{subject}_fp32_renorm.hdf5", "w") as f:
        f.create_dataset("betas", data=x)
    trials = len(x)
    per_session = -(-trials // spec.nsd_sessions)
    behav = np.full((trials, NSD_BEHAV_COLUMNS), -1.0)
    session = np.arange(trials) // per_session
    behav[:, 0], behav[:, 1], behav[:, 2] = coco, k, session + 1
    behav[:, 4] = np.arange(trials) % per_session
    behav[:, 3] = behav[:, 4] // NSD_RUN_TRIALS + 1
    behav[:, 5], behav[:, 16] = np.arange(trials), is_test
    folder = root / "wds" / subject
    test_samples, counter = [], 0
    for s in range(spec.nsd_sessions):
        samples = []
        for t in np.flatnonzero(session == s):
            olds = np.full((3, NSD_BEHAV_COLUMNS), -1.0)
            others = np.flatnonzero(coco == coco[t])
            olds[: min(3, len(others))] = behav[others[:3]]
            past = np.full((15, NSD_BEHAV_COLUMNS), -1.0)
            future = np.full((15, NSD_BEHAV_COLUMNS), -1.0)
            lo, hi = max(s * per_session, t - 15), min(min((s + 1) * per_session, trials), t + 16)
            past[15 - (t - lo) :] = behav[lo:t]
            future[: hi - t - 1] = behav[t + 1 : hi]
            members = {"behav.npy": behav[t : t + 1], "past_behav.npy": past, "future_behav.npy": future}
            (test_samples if is_test[t] else samples).append({**members, "olds_behav.npy": olds})
        if samples:
            _write_shard(folder / "train" / f"{s}.tar", samples, counter)
            counter += len(samples)
    _write_shard(folder / "new_test" / "0.tar", test_samples, 0)


def _write_mindeye1(
    root: Path,
    subject: str,
    spec: SimSpec,
    rng: np.random.Generator,
    x: np.ndarray,
    shown: np.ndarray,
    coco: np.ndarray,
    images: np.ndarray,
    is_test: np.ndarray,
) -> None:
    """webdataset_avg_split/{train,val,test}/<split>_<subject>_<k>.tar: one sample per image, its presentations'
    betas (repeats, V) float16, the stimulus as JPEG, its 73k index, trial numbers and repeat count; a tenth of
    the training images are the validation split, as published; shards in shuffled sample order."""
    from PIL import Image

    train = np.flatnonzero(~is_test)
    val = rng.choice(train, max(1, len(train) // 10), replace=False)
    splits = {"train": np.setdiff1d(train, val), "val": val, "test": np.flatnonzero(is_test)}
    shards = {"train": 2, "val": 1, "test": 2}
    counter = 0
    for split, rows in splits.items():
        samples = []
        for i in rng.permutation(rows):
            trials = np.flatnonzero(shown == i)
            jpg = io.BytesIO()
            Image.fromarray(images[i]).save(jpg, format="JPEG", quality=95)
            samples.append(
                {
                    "nsdgeneral.npy": x[trials].astype(np.float16),
                    "jpg": jpg.getvalue(),
                    "coco73k.npy": np.array([coco[i]], dtype=np.int64),
                    "trial.npy": trials.astype(np.int64),
                    "num_uniques.npy": np.array([len(trials)], dtype=np.int64),
                }
            )
        for n, part in enumerate(np.array_split(np.arange(len(samples)), shards[split])):
            path = root / "webdataset_avg_split" / split / f"{split}_{subject}_{n}.tar"
            _write_shard(path, [samples[j] for j in part], counter)
            counter += len(part)


def _write_shard(path: Path, samples: list[dict], first: int) -> None:
    """A WebDataset shard: sample keys sample<9 digits> from `first`, members `.npy` arrays or raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for n, sample in enumerate(samples, start=first):
            for name, value in sample.items():
                if isinstance(value, np.ndarray):
                    buffer = io.BytesIO()
                    np.save(buffer, value, allow_pickle=False)
                    value = buffer.getvalue()
                info = tarfile.TarInfo(f"sample{n:09d}.{name}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
