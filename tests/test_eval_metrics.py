"""eval_metrics: vectorised scores equal the published loop definitions; sane extremes; offline skipping."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

import eval_metrics
import feature_nets
from eval_metrics import (
    PAIRWISE,
    draw_n_way_trials,
    evaluate,
    identification_accuracy,
    n_way_top_k_accuracy,
    score_matrix,
)

N, SIZE, SETS = 6, 16, 2


def _images(*shape, seed=0, size=SIZE):
    return np.random.default_rng(seed).integers(0, 256, (*shape, size, size, 3), dtype=np.uint8)


def _conv(in_ch, out_ch, seed):
    conv = nn.Conv2d(in_ch, out_ch, 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
    return conv


class TinyLPIPS(nn.Module):
    """LPIPS-like: unit-normalised conv features, squared distance averaged over space -> (B,)."""

    def __init__(self):
        super().__init__()
        self.conv = _conv(3, 4, seed=1)

    def forward(self, x, y):
        fx, fy = F.normalize(self.conv(x), dim=1), F.normalize(self.conv(y), dim=1)
        return (fx - fy).square().sum(1).mean((1, 2))


class TinyClassifier(nn.Module):
    def __init__(self, num_classes=20):
        super().__init__()
        self.conv, self.head = _conv(3, 8, seed=2), nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean((2, 3)))


class RandomLogits(nn.Module):
    """Ignores its input: classes on the reconstructions are unrelated to the ground truth."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes, self.generator = num_classes, torch.Generator().manual_seed(3)

    def forward(self, x):
        return torch.randn(len(x), self.num_classes, generator=self.generator)


class TinyFeatures(nn.Module):
    num_features = 3

    def __init__(self):
        super().__init__()
        self.conv = _conv(3, self.num_features, seed=4)

    def forward(self, x):
        return self.conv(x.float() / 255).mean((2, 3))


def _preprocess(x):
    return x.float() / 255


# ---- the published definitions, pair by pair (numpy / skimage / one LPIPS call per pair) ----


def _published_score(metric, pred, gt, lpips_model=None):
    if metric == "mse":
        return np.square(pred.astype(np.float64) - gt.astype(np.float64)).mean()
    if metric == "mse_uint8":
        return np.square(pred - gt).mean()  # uint8 arithmetic, as the published arrays were
    if metric == "pcc":
        return np.corrcoef(pred.reshape(-1), gt.reshape(-1))[0, 1]
    if metric == "ssim":
        return structural_similarity(pred, gt, data_range=255, channel_axis=-1)
    x, y = (torch.FloatTensor(np.expand_dims(im.transpose(2, 0, 1) / 127.5 - 1.0, 0)) for im in (pred, gt))
    with torch.no_grad():
        return lpips_model(x, y).item()


def _published_pair_wise(metric, preds, gts, lpips_model=None):
    lower = PAIRWISE[metric]
    scores = np.array([[_published_score(metric, p, g, lpips_model) for g in gts] for p in preds])
    corrects = []
    for i in range(len(preds)):
        rest = [scores[i, j] for j in range(len(gts)) if j != i]
        wins = sum((scores[i, i] < c) if lower else (scores[i, i] > c) for c in rest)
        corrects.append(wins / len(rest))
    return scores, corrects


@pytest.mark.parametrize("metric", ["mse", "mse_uint8", "pcc", "ssim", "lpips"])
def test_pair_wise_matches_published_loop(metric):
    gt, samples = _images(N), _images(SETS, N, seed=1)
    samples[:, :3] = gt[:3] // 2 + samples[:, :3] // 2  # some reconstructions resemble their ground truth
    lpips_model = TinyLPIPS() if metric == "lpips" else None
    ref = [_published_pair_wise(metric, s, gt, lpips_model) for s in samples]

    scores = score_matrix(metric, torch.from_numpy(samples).flatten(0, 1), torch.from_numpy(gt), lpips_model, 7)
    ref_scores = np.concatenate([r[0] for r in ref])
    tol = 1e-6 if metric == "lpips" else 1e-10
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=tol, atol=tol)
    accuracy = identification_accuracy(scores.view(SETS, N, N), PAIRWISE[metric])
    np.testing.assert_array_equal(accuracy.numpy(), np.array([r[1] for r in ref]))

    result = evaluate(gt, samples, metrics=[metric], lpips_model=lpips_model, device="cpu", batch_size=5)
    assert result["skipped"] == {}
    assert result["scores"][metric] == pytest.approx(np.mean([np.mean(r[1]) for r in ref]), abs=1e-12)


def test_float_images_give_the_same_scores():
    gt, samples = _images(N), _images(SETS, N, seed=1)
    as_uint8 = evaluate(gt, samples, metrics=["mse", "pcc", "ssim"])
    as_float = evaluate(gt.astype(np.float32), torch.from_numpy(samples).double(), ["mse", "pcc", "ssim"])
    assert as_float == as_uint8


def test_perfect_reconstruction_scores_one():
    gt = _images(N)
    result = evaluate(gt, np.stack([gt, gt]), metrics=["mse", "pcc", "ssim", "lpips"], lpips_model=TinyLPIPS())
    assert result["scores"] == {"mse": 1.0, "pcc": 1.0, "ssim": 1.0, "lpips": 1.0}


def test_n_way_draws_are_distinct_reproducible_and_chunk_independent(monkeypatch):
    picks = draw_n_way_trials(5, 12, 4, 30, seed=7)
    assert picks.shape == (5, 30, 3) and picks.min() >= 0 and picks.max() < 11
    assert (picks.sort(-1).values.diff(dim=-1) > 0).all()  # n - 1 distinct classes per trial
    assert torch.equal(picks, draw_n_way_trials(5, 12, 4, 30, seed=7))
    assert not torch.equal(picks, draw_n_way_trials(5, 12, 4, 30, seed=8))
    monkeypatch.setattr(eval_metrics, "TRIAL_KEYS_PER_CHUNK", 2 * 30 * 11)  # 2 items per chunk
    assert torch.equal(picks, draw_n_way_trials(5, 12, 4, 30, seed=7))


@pytest.mark.parametrize("tie_rule", ["split", "published"])
@pytest.mark.parametrize("top_k", [1, 3])
def test_n_way_matches_published_loop_with_the_same_draws(top_k, tie_rule):
    m, c, n_way, trials = 8, 15, 5, 40
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(m, c, generator=g).mul(2)
    probs = logits.softmax(-1)
    gt_class = torch.randint(0, c, (m,), generator=g)
    accuracy, ties = n_way_top_k_accuracy(logits, gt_class, n_way, trials, top_k, seed=5, tie_rule=tie_rule)
    assert ties.tolist() == [0] * m

    picks = draw_n_way_trials(m, c, n_way, trials, seed=5)
    expected = []
    for item in range(m):
        own = int(gt_class[item])
        pick_range = [k for k in range(c) if k != own]
        hits = []
        for t in range(trials):
            picked = [pick_range[int(o)] for o in picks[item, t]]
            pred_picked = torch.cat([probs[item, own : own + 1], probs[item, picked]])
            hits.append(float(0 in pred_picked.topk(top_k).indices.tolist()))
        expected.append(np.mean(hits))
    np.testing.assert_array_equal(accuracy.numpy(), np.array(expected))


def test_n_way_identical_images_score_one_and_is_reproducible():
    gt = _images(10)
    classifier = (TinyClassifier(num_classes=20), _preprocess)
    result = evaluate(gt, np.stack([gt, gt]), ["n_way"], classifier=classifier, n_way=5, num_trials=50, batch_size=4)
    assert result["scores"] == {"top-1-class": 1.0, "top-1-class (max)": 1.0}

    samples = _images(3, 10, seed=1)
    first = evaluate(gt, samples, ["n_way"], classifier=classifier, n_way=5, num_trials=50, top_k=2, seed=3)
    again = evaluate(gt, samples, ["n_way"], classifier=classifier, n_way=5, num_trials=50, top_k=2, seed=3)
    assert first == again
    assert 0.0 < first["scores"]["top-2-class"] <= first["scores"]["top-2-class (max)"] <= 1.0


def test_n_way_random_classifier_is_chance():
    n_way = 10
    gt, samples = _images(128), _images(2, 128, seed=1)
    classifier = (RandomLogits(num_classes=100), _preprocess)
    result = evaluate(gt, samples, ["n_way"], classifier=classifier, n_way=n_way, num_trials=200, batch_size=64)
    assert result["scores"]["top-1-class"] == pytest.approx(1 / n_way, abs=0.04)


class OverconfidentLogits(nn.Module):
    """Ignores its input: one random class per image far ahead of the rest, whose float32 softmax is exactly 0."""

    def __init__(self, num_classes, margin=200.0):
        super().__init__()
        self.num_classes, self.margin = num_classes, margin
        self.generator = torch.Generator().manual_seed(4)

    def forward(self, x):
        logits = torch.randn(len(x), self.num_classes, generator=self.generator)
        top = torch.randint(0, self.num_classes, (len(x),), generator=self.generator)
        return logits + self.margin * F.one_hot(top, self.num_classes)


def test_n_way_underflow_gives_no_ties_to_the_ground_truth():
    n_way = 5
    gt, samples = _images(64), _images(2, 64, seed=1)
    classifier = (OverconfidentLogits(num_classes=100), _preprocess)
    probs = classifier[0](torch.zeros(3, 1)).softmax(-1)
    assert ((probs == 0).sum(-1) == 99).all()  # the premise: every class but the top one underflows
    result = evaluate(gt, samples, ["n_way"], classifier=classifier, n_way=n_way, num_trials=200)
    # unrelated images: about chance (less the trials that pick the reconstruction's own top class), where
    # comparing underflowed probabilities with ties to the ground truth gave about 1 - 4 / 99
    assert result["scores"]["top-1-class"] == pytest.approx(1 / n_way, abs=0.04)

    assert result["ties"] == {"top-1-class": 0}  # logits differ where their probabilities underflow
    published = evaluate(
        gt, samples, ["n_way"], classifier=classifier, n_way=n_way, num_trials=200, tie_rule="published"
    )
    assert published["scores"]["top-1-class"] > 0.9 and published["ties"]["top-1-class"] > 0.9 * 2 * 64 * 200


@pytest.mark.parametrize("top_k", [1, 2])
def test_n_way_ties_count_as_their_expected_outcome(top_k):
    m, c, n_way, trials = 4, 10, 5, 30
    logits = torch.zeros(m, c)  # every class ties with every other
    gt_class = torch.arange(m)
    accuracy, ties = n_way_top_k_accuracy(logits, gt_class, n_way, trials, top_k)
    assert torch.allclose(accuracy, torch.full((m,), top_k / n_way, dtype=torch.float64))
    assert ties.tolist() == [trials] * m
    accuracy, ties = n_way_top_k_accuracy(logits, gt_class, n_way, trials, top_k, tie_rule="published")
    assert accuracy.tolist() == [1.0] * m and ties.tolist() == [trials] * m

    logits[:, 0] = 1.0  # class 0 ahead of the rest: item 0 always wins; the others tie below it when it is drawn
    accuracy, ties = n_way_top_k_accuracy(logits, gt_class, n_way, trials, top_k)
    picked = (draw_n_way_trials(m, c, n_way, trials) == 0).any(-1)  # (M, T): slot 0 is class 0 for items > 0
    expected = torch.where(picked, (top_k - 1) / (n_way - 1), top_k / n_way).mean(-1)
    assert accuracy[0] == 1.0 and torch.allclose(accuracy[1:], expected[1:].double())
    with pytest.raises(ValueError, match="tie_rule"):
        n_way_top_k_accuracy(logits, gt_class, n_way, trials, top_k, tie_rule="random")


def test_item_scores_and_intervals_resample_items_with_their_samples():
    gt, recon = _images(N), _images(N, seed=1)
    recon[:3] = gt[:3] // 2 + recon[:3] // 2
    classifier, nets = (TinyClassifier(), _preprocess), _tiny_feature_nets()
    metrics = ["mse", "ssim", "n_way", "pixcorr", "alexnet2", "swav", "fid"]
    kwargs = dict(classifier=classifier, feature_nets=nets, fid_model=TinyFeatures(), n_way=5, num_trials=20)
    once = evaluate(gt, recon[None], metrics, **kwargs)
    twice = evaluate(gt, np.stack([recon, recon]), metrics, **kwargs)  # a second, identical sample set

    def but_n_way(scores):  # n-way draws other trials for each sample set
        return {name: value for name, value in scores.items() if not name.startswith("top-")}

    assert but_n_way(once["scores"]) == but_n_way(twice["scores"])
    assert but_n_way(once["intervals"]) == but_n_way(twice["intervals"])  # not narrower: the item is the unit
    per_item = once["per_item"]
    assert set(per_item) == set(once["scores"]) - {"fid", "top-1-class (max)"} and once["intervals"]["fid"] is None
    for name, items in per_item.items():
        low, high = once["intervals"][name]
        assert len(items) == N and np.mean(items) == pytest.approx(once["scores"][name], abs=1e-12), name
        assert min(items) - 1e-12 <= low <= once["scores"][name] <= high <= max(items) + 1e-12, name
    assert once["ties"] == {"top-1-class": 0}

    other = _images(N, seed=2)
    both = evaluate(gt, np.stack([recon, other]), ["mse"])["per_item"]["mse"]
    expected = np.mean([per_item["mse"], evaluate(gt, other[None], ["mse"])["per_item"]["mse"]], axis=0)
    np.testing.assert_allclose(both, expected, atol=1e-12)  # an item's score: the mean over its samples


def test_fid_with_a_feature_module_matches_scipy():
    gt, samples = _images(12), _images(2, 12, seed=1)
    result = evaluate(gt, samples, ["fid"], fid_model=TinyFeatures(), device="cpu", batch_size=5)

    features = TinyFeatures()

    def feats(images):
        with torch.no_grad():
            return features(torch.from_numpy(images).permute(0, 3, 1, 2)).double().numpy()

    def frechet(a, b):
        covmean = scipy.linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False)).real
        diff = a.mean(0) - b.mean(0)
        return diff @ diff + np.trace(np.cov(a, rowvar=False) + np.cov(b, rowvar=False) - 2 * covmean)

    expected = np.mean([frechet(feats(gt), feats(s)) for s in samples])
    assert result["scores"]["fid"] == pytest.approx(expected, rel=1e-4)
    same = evaluate(gt, gt[None], ["fid"], fid_model=TinyFeatures(), device="cpu")
    assert abs(same["scores"]["fid"]) < 1e-4


def test_missing_weights_are_skipped_with_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("eval_metrics must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    gt = _images(3)
    result = evaluate(gt, gt[None], metrics=["mse", "lpips", "n_way", "fid"], device="cpu")
    assert result["scores"] == {"mse": 1.0}
    skipped = result["skipped"]
    assert set(skipped) == {"lpips", "top-1-class", "top-1-class (max)", "fid"}
    checkpoints = tmp_path / "hub" / "checkpoints"
    assert str(checkpoints / "alexnet-owt-7be5be79.pth") in skipped["lpips"]
    assert str(checkpoints / "vit_h_14_swag-80465313.pth") in skipped["top-1-class"]
    assert "weights-inception-2015-12-05-6726825d.pth" in skipped["fid"]
    assert not any(tmp_path.rglob("*.pth"))


def test_vit_classifier_loads_from_the_cache_and_preprocesses_like_pil(tmp_path, monkeypatch):
    import torchvision
    from PIL import Image

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1
    path = feature_nets.cached_weights_path(weights.url)
    path.parent.mkdir(parents=True)
    path.touch()
    built = []
    monkeypatch.setattr(torchvision.models, "vit_h_14", lambda weights: built.append(weights) or TinyClassifier())
    model, preprocess = eval_metrics.load_vit_h14_classifier("cpu")
    assert built == [weights] and not model.training
    images = _images(2)
    out = preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
    expected = torch.stack([weights.transforms()(Image.fromarray(img)) for img in images])
    assert out.shape == (2, 3, 518, 518) and torch.equal(out, expected)


def test_too_few_images_are_skipped():
    gt = _images(1)
    result = evaluate(gt, gt[None], metrics=["mse", "n_way"], classifier=(TinyClassifier(), _preprocess))
    assert result["scores"] == {}
    assert "at least 2" in result["skipped"]["mse"] and "at least 2" in result["skipped"]["top-1-class"]


def test_bad_input_raises_clear_errors():
    gt = _images(4)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(gt, gt[None], metrics=["psnr"])
    with pytest.raises(ValueError, match="samples must be"):
        evaluate(gt, _images(1, 3), metrics=["mse"])
    with pytest.raises(ValueError, match="gt_images must be"):
        evaluate(gt[..., 0], gt[None], metrics=["mse"])
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        evaluate(gt / 255.0 - 0.5, gt[None], metrics=["mse"])
    with pytest.raises(ValueError, match="needs uint8"):
        evaluate(gt.astype(np.float32), gt[None], metrics=["mse_uint8"])
    with pytest.raises(ValueError, match="n_way must be"):
        evaluate(gt, gt[None], metrics=["n_way"], classifier=(TinyClassifier(num_classes=4), _preprocess), n_way=5)


# ---- MindEye's suite: the definitions as MindEye's evaluation computes them, image by image ----


class TinyFeatureNet(nn.Module):
    """Random conv features pooled to 4x4; named layers (a dict, as AlexNet's extractor) or one tensor."""

    def __init__(self, layers=(), seed=5):
        super().__init__()
        self.layers = layers
        self.convs = nn.ModuleList(_conv(3, 4, seed + i) for i in range(max(1, len(layers))))

    def forward(self, x):
        outs = [F.adaptive_avg_pool2d(conv(x), 4) for conv in self.convs]  # (B, 4, 4, 4) each
        return dict(zip(self.layers, outs, strict=True)) if self.layers else outs[0]


def _tiny_feature_nets():
    return {
        "alexnet": TinyFeatureNet(("features.4", "features.11")),
        "inception": TinyFeatureNet(seed=7),
        "clip": TinyFeatureNet(seed=8),
        "effnet": TinyFeatureNet(seed=9),
        "swav": TinyFeatureNet(seed=10),
    }


def _mindeye_input(images, size, dtype=torch.float32):
    """What MindEye's notebooks feed a metric: [0, 1] floats, Resize((256, 256)) then Resize(size), tensors."""
    from torchvision import transforms

    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255
    for side in ((256, 256), size):  # torchvision 0.16's tensor default: no antialiasing
        x = transforms.Resize(side, interpolation=transforms.InterpolationMode.BILINEAR, antialias=False)(x)
    return x


def _mindeye_pixel_reference(metric, gt, samples):
    from skimage.color import rgb2gray

    per_set = []
    for recon in samples:
        real, fake = (_mindeye_input(x, 425, torch.float64).numpy() for x in (gt, recon))  # (N, 3, 425, 425)
        if metric == "pixcorr":
            scores = [np.corrcoef(real[i].reshape(-1), fake[i].reshape(-1))[0, 1] for i in range(len(gt))]
        else:
            real, fake = rgb2gray(real.transpose(0, 2, 3, 1)), rgb2gray(fake.transpose(0, 2, 3, 1))
            scores = [
                structural_similarity(
                    fake[i], real[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
                )
                for i in range(len(gt))
            ]
        per_set.append(np.mean(scores))
    return np.mean(per_set)


@pytest.mark.parametrize("metric", ["pixcorr", "ssim_mindeye"])
def test_mindeye_pixel_metrics_match_the_per_image_reference(metric):
    # larger than MindEye's 256x256, so its first resize shrinks (without antialiasing) and the second grows
    gt, samples = _images(4, size=300), _images(SETS, 4, seed=1, size=300)
    samples[:, :2] = gt[:2] // 2 + samples[:, :2] // 2
    result = evaluate(gt, samples, metrics=[metric], device="cpu", batch_size=3)
    assert result["skipped"] == {}
    assert result["scores"][metric] == pytest.approx(_mindeye_pixel_reference(metric, gt, samples), abs=1e-10)
    assert evaluate(gt[:2], gt[None, :2], metrics=[metric])["scores"][metric] == pytest.approx(1.0, abs=1e-12)


def _mindeye_features(images, net, spec):
    from torchvision import transforms

    x = transforms.Normalize(spec.mean, spec.std)(_mindeye_input(images, spec.size))
    with torch.no_grad():
        out = net(x)
    return (out[spec.layer] if isinstance(out, dict) else out).flatten(1).numpy()


def _mindeye_feature_reference(metric, gt, samples, net):
    """MindEye's two_way_identification / correlation distance, one reconstruction at a time."""
    import scipy.spatial

    spec = feature_nets.FEATURES[metric]
    reals, n = _mindeye_features(gt, net, spec), len(gt)
    per_set, matrices = [], []
    for recon in samples:
        preds = _mindeye_features(recon, net, spec)
        r = np.corrcoef(reals, preds)[:n, n:]  # r[i, j]: image i against reconstruction j
        matrices.append(r.T)
        if metric in ("effnet", "swav"):
            per_set.append(np.mean([scipy.spatial.distance.correlation(reals[j], preds[j]) for j in range(n)]))
        else:
            per_set.append(np.mean([sum(r[i, j] < r[j, j] for i in range(n)) / (n - 1) for j in range(n)]))
    return np.mean(per_set), np.concatenate(matrices)


@pytest.mark.parametrize("metric", ["alexnet2", "alexnet5", "inception", "clip", "effnet", "swav"])
def test_mindeye_feature_metrics_match_the_per_image_reference(metric):
    gt, samples = _images(N), _images(SETS, N, seed=1)
    samples[:, :3] = gt[:3] // 2 + samples[:, :3] // 2
    nets = _tiny_feature_nets()
    spec = feature_nets.FEATURES[metric]
    expected, expected_r = _mindeye_feature_reference(metric, gt, samples, nets[spec.net])

    r = eval_metrics.feature_correlations(
        torch.from_numpy(samples).flatten(0, 1), torch.from_numpy(gt), nets[spec.net], spec, batch_size=5
    )
    np.testing.assert_allclose(r.numpy(), expected_r, rtol=1e-9, atol=1e-9)
    result = evaluate(gt, samples, metrics=[metric], feature_nets=nets, device="cpu", batch_size=4)
    assert result["skipped"] == {}
    assert result["scores"][metric] == pytest.approx(expected, abs=1e-9)


def test_mindeye_group_on_perfect_reconstructions():
    gt = _images(4)
    result = evaluate(gt, gt[None], metrics=["mindeye"], feature_nets=_tiny_feature_nets())
    assert list(result["scores"]) == list(eval_metrics.MINDEYE_METRICS) and result["skipped"] == {}
    for metric, value in result["scores"].items():
        assert value == pytest.approx(0.0 if metric in ("effnet", "swav") else 1.0, abs=1e-9), metric


def test_metric_names_groups_and_chance_levels():
    assert eval_metrics.expand_metrics(["mse", "mindeye", "pixcorr"]) == ["mse", *eval_metrics.MINDEYE_METRICS]
    with pytest.raises(ValueError, match=r"unknown metrics \['alexnet'\]"):
        eval_metrics.expand_metrics(["alexnet"])
    chance = eval_metrics.chance_level
    assert chance("ssim") == chance("clip") == 0.5
    assert chance("top-1-class", n_way=50) == chance("top-1-class (max)", n_way=50) == 0.02
    assert chance("top-5-class", n_way=10) == 0.5
    assert chance("fid") is None and chance("pixcorr") is None and chance("swav") is None


def test_mindeye_metrics_without_weights_are_skipped_naming_the_file(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("eval_metrics must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    gt = _images(3)
    result = evaluate(gt, _images(1, 3, seed=1), metrics=["mindeye"], device="cpu")
    assert set(result["scores"]) == {"pixcorr", "ssim_mindeye"}
    skipped = result["skipped"]
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    expected = {
        "alexnet2": checkpoints / "alexnet-owt-7be5be79.pth",
        "alexnet5": checkpoints / "alexnet-owt-7be5be79.pth",
        "inception": checkpoints / "inception_v3_google-0cc3c7bd.pth",
        "effnet": checkpoints / "efficientnet_b1-c27df63c.pth",
        "swav": checkpoints / "swav_800ep_pretrain.pth.tar",
        "clip": tmp_path / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai",
    }
    assert set(skipped) == set(expected)
    for metric, path in expected.items():
        assert str(path) in skipped[metric] and "\n" not in skipped[metric], metric
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


class TinyTorchvisionNet(nn.Module):
    """Has the nodes FEATURES reads from torchvision's nets: features.4, features.11, avgpool."""

    def __init__(self, weights=None):
        super().__init__()
        self.features = nn.Sequential(_conv(3, 4, seed=11), *[nn.ReLU() for _ in range(11)])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@pytest.mark.parametrize(
    "net, builder, weights",
    [
        ("alexnet", "alexnet", "AlexNet_Weights"),
        ("inception", "inception_v3", "Inception_V3_Weights"),
        ("effnet", "efficientnet_b1", "EfficientNet_B1_Weights"),
    ],
)
def test_torchvision_feature_nets_load_from_the_cache(tmp_path, monkeypatch, net, builder, weights):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected_weights = getattr(torchvision.models, weights).DEFAULT
    path = feature_nets.cached_weights_path(expected_weights.url)
    path.parent.mkdir(parents=True)
    path.touch()
    built = []
    monkeypatch.setattr(torchvision.models, builder, lambda weights: built.append(weights) or TinyTorchvisionNet())
    model = feature_nets.load_feature_net(net, "cpu")
    assert built == [expected_weights] and not model.training
    out = model(torch.rand(2, 3, 20, 20))
    layers = {spec.layer for spec in feature_nets.FEATURES.values() if spec.net == net}
    assert set(out) == layers and all(len(v) == 2 for v in out.values())


def test_swav_loads_the_backbone_from_the_cached_state_dict(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = feature_nets.cached_weights_path(feature_nets.SWAV_URL)
    path.parent.mkdir(parents=True)
    source = TinyTorchvisionNet()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2, 2)  # SwAV's head: not part of the ResNet
    torch.save(state, path)
    monkeypatch.setattr(torchvision.models, "resnet50", TinyTorchvisionNet)
    model = feature_nets.load_feature_net("swav", "cpu")
    x = torch.rand(2, 3, 20, 20)
    torch.testing.assert_close(model(x)["avgpool"], source.avgpool(source.features(x)))

    torch.save({"module.other.weight": torch.zeros(2)}, path)
    with pytest.raises(feature_nets.MetricUnavailable, match="not SwAV's ResNet-50 checkpoint"):
        feature_nets.load_feature_net("swav", "cpu")


def test_clip_loads_open_clip_from_the_hugging_face_cache(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--timm--vit_large_patch14_clip_224.openai"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    weights = repo / "snapshots" / "abc123" / "open_clip_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.touch()
    calls = []

    def create_model(name, pretrained, force_quick_gelu):
        calls.append((name, pretrained, force_quick_gelu))
        return types.SimpleNamespace(visual=TinyFeatureNet())

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(create_model=create_model))
    model = feature_nets.load_feature_net("clip", "cpu")
    assert calls == [("ViT-L-14", str(weights), True)] and not model.training
