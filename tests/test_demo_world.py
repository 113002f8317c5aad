"""The simulated world's models: the class embedding starts from the classes' names."""

import json

import torch

from demo.world_models import class_names, init_from_names


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_classes_that_share_words_start_near_each_other():
    names = ["red striped star on sky horizon", "red striped star on sky clouds", "blue plain ring on sand flat"]
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(len(names) + 1, 4096)  # + the unconditional class, left as it is
    uncond = embedding.weight[-1].detach().clone()
    init_from_names(embedding, names)
    w = embedding.weight.detach()
    assert _cosine(w[0], w[1]) > 0.75  # five of six words shared
    assert abs(_cosine(w[0], w[2]) - 1 / 6) < 0.06  # only "on" shared
    assert torch.allclose(w[:3].std(dim=1), torch.ones(3), atol=0.05)  # unit variance per coordinate, as N(0, 1)
    assert torch.equal(w[-1], uncond)


def test_class_names_follow_the_class_index(tmp_path):
    folder = tmp_path / "Kamitani" / "npz"
    folder.mkdir(parents=True)
    index = {
        "1": ["n00000002", "blue plain ring on sand flat"],
        "0": ["n00000001", "n00000003", "red dotted bar on sky flat"],
    }  # a class may own a second WordNet id
    (folder / "imagenet_class_index.json").write_text(json.dumps(index))
    assert class_names(tmp_path) == ["red dotted bar on sky flat", "blue plain ring on sand flat"]


def test_the_world_label_ldm_file_holds_time_embed_condtion_as_built(tmp_path):
    """As the published label2img file, the world's holds every key its config builds; the 77-token double
    conditioning it never trains is at PyTorch's default initialisation (seeded), not zero (docs/defects.md #16)."""
    from demo.world_models import WorldSizes, build_ldm, ldm_config, write_label2img

    sizes = WorldSizes(n_embed=16, unet_channels=32, context_dim=32)
    config = ldm_config(sizes, 32, 5)
    ldm = build_ldm(config, use_time_cond=False)
    for seed, folder in ((0, tmp_path / "a"), (0, tmp_path / "b"), (1, tmp_path / "c")):
        write_label2img(ldm, config, folder, steps=1, seed=seed)
    tec = {
        name: {
            k: v
            for k, v in torch.load(tmp_path / name / "model.ckpt", weights_only=True)["state_dict"].items()
            if "time_embed_condtion" in k
        }
        for name in "abc"
    }
    assert len(tec["a"]) == 6 and all(v.abs().sum() > 0 for v in tec["a"].values())
    assert all(torch.equal(tec["a"][k], tec["b"][k]) for k in tec["a"])  # seeded
    assert not torch.equal(
        tec["a"]["model.diffusion_model.time_embed_condtion.2.weight"],
        tec["c"]["model.diffusion_model.time_embed_condtion.2.weight"],
    )
