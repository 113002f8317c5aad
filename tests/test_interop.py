"""Our checkpoints as the original code reads them: its config classes by name, the attributes it reads, no numpy
pickles; and our restricted loader still reads them."""

import pickletools
import sys
import types
import zipfile

import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from checkpoint_layouts import finetuned_checkpoint, stage_a_checkpoint, training_state
from config import StageA1Config, StageA2Config, StageBConfig
from config_engine import config_to_dict
from engine import AmpScaler
from sc_mbm.mae_for_fmri import build_mae

# docs/formats.md, "The config fields the original code reads"
NUMBER, TEXT = (int, float), (str,)
READS = {
    "Config_MBM_fMRI": {
        **dict.fromkeys(
            "lr min_lr weight_decay mask_ratio mlp_ratio img_recon_weight focus_rate clip_grad".split(), NUMBER
        ),
        **dict.fromkeys(
            "num_epoch warmup_epochs batch_size patch_size embed_dim decoder_embed_dim depth num_heads "
            "decoder_num_heads seed aug_times accum_iter local_rank".split(),
            (int,),
        ),
        **dict.fromkeys("root_path output_path roi".split(), TEXT),
        **dict.fromkeys("include_hcp include_kam use_nature_img_loss".split(), (bool,)),
        **dict.fromkeys("num_sub_limit focus_range".split(), (type(None), int, list)),
    },
    "Config_MBM_finetune": {
        **dict.fromkeys("root_path output_path kam_path bold5000_path dataset pretrain_mbm_path".split(), TEXT),
        "include_nonavg_test": (bool,),
        "kam_subs": (list,),
        "bold5000_subs": (list,),
        **dict.fromkeys("lr weight_decay mask_ratio clip_grad min_lr".split(), NUMBER),
        **dict.fromkeys("num_epoch batch_size accum_iter warmup_epochs local_rank".split(), (int,)),
    },
    "Config_Generative_Model": {
        **dict.fromkeys(
            "seed patch_size img_size batch_size num_epoch accumulate_grad num_samples ddim_steps".split(), (int,)
        ),
        **dict.fromkeys(
            "root_path kam_path bold5000_path roi pretrain_gm_path dataset pretrain_mbm_path".split(), TEXT
        ),
        "kam_subs": (list,),
        "bold5000_subs": (list,),
        "lr": NUMBER,
        "crop_ratio": NUMBER,
        "precision": (int, str),
        **dict.fromkeys("global_pool use_time_cond eval_avg".split(), (bool,)),
        **dict.fromkeys("HW model_meta checkpoint_path logger test_category".split(), (type(None), dict, list)),
    },
}
ARCH = dict(embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_num_heads=2, decoder_depth=1)


def _original_config_module():
    """A module `config` holding empty classes of the original's names, as its code base provides them."""
    module = types.ModuleType("config")
    for name in READS:
        cls = type(name, (), {"__module__": "config"})
        setattr(module, name, cls)
    return module


def _globals(path) -> set[str]:
    """Every global a torch checkpoint's pickle references (module.name)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        elif op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    a1 = StageA1Config(num_voxels=64, **ARCH)
    model = build_mae(config_to_dict(a1))
    optimizer = torch.optim.AdamW(model.parameters())
    amp = AmpScaler("fp32", torch.device("cpu"))
    paths = {
        "a1": save_checkpoint(
            stage_a_checkpoint(model, optimizer, amp.state_dict(), 3, config_to_dict(a1)), tmp / "a1.pth"
        )
    }
    a2 = StageA2Config()
    paths["a2"] = save_checkpoint(
        stage_a_checkpoint(model, optimizer, amp.state_dict(), 1, config_to_dict(a1), config_to_dict(a2)),
        tmp / "a2.pth",
    )
    b = StageBConfig(model_meta={"patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0})
    finetuned = finetuned_checkpoint(model, b)
    paths["finetuned"] = save_checkpoint(finetuned, tmp / "finetuned.pth")
    paths["b_run"] = save_checkpoint({**finetuned, **training_state(optimizer, {}, 2, best=0.1)}, tmp / "b.pth")
    return paths


@pytest.mark.parametrize(
    "name, key, cls",
    [
        ("a1", "config", "Config_MBM_fMRI"),
        ("a2", "config", "Config_MBM_fMRI"),
        ("a2", "finetune_config", "Config_MBM_finetune"),
        ("finetuned", "config", "Config_Generative_Model"),
        ("b_run", "config", "Config_Generative_Model"),
    ],
)
def test_the_original_reads_every_field_it_needs(files, name, key, cls, monkeypatch):
    monkeypatch.setitem(sys.modules, "config", _original_config_module())
    ckpt = torch.load(files[name], map_location="cpu", weights_only=False)  # the original's plain torch.load
    config = ckpt[key]
    assert type(config).__module__ == "config" and type(config).__name__ == cls
    for field, types_ in READS[cls].items():
        assert isinstance(getattr(config, field), types_), (cls, field, getattr(config, field))
    if name == "finetuned":
        assert config.precision == 32 and ckpt["state"].dtype == torch.uint8 and "model_state_dict" in ckpt


@pytest.mark.parametrize("name", ["a1", "a2", "finetuned", "b_run"])
def test_no_numpy_pickles_and_our_loader_still_reads_them(files, name):
    assert not [g for g in _globals(files[name]) if g.startswith("numpy")]  # numpy 1 could not read numpy 2's
    ckpt = load_checkpoint(files[name])
    assert type(ckpt["config"]).__module__ == "config" and type(ckpt["config"]).__qualname__.startswith("Config_")
    save_checkpoint(ckpt, files[name].with_suffix(".again"))  # what our loader gives can be saved again
    assert load_checkpoint(files[name].with_suffix(".again"))["config"].to_dict() == ckpt["config"].to_dict()
