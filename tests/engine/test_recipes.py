import dataclasses
import json

import pytest

from genattn.attention import AttentionConfig
from genattn.engine.recipes import TINY_BACKBONE, Recipe, get_recipe, tiny_recipe
from genattn.models import ModelConfig, list_models

ATT = "faster_rcnn_r50_fpn_attention_0010_1x_coco"


def test_defaults_are_mmdetection_1x():
    r = Recipe()
    assert (r.base_lr, r.base_batch_size, r.momentum, r.weight_decay) == (0.02, 16, 0.9, 1e-4)
    assert (r.warmup_iters, r.warmup_ratio, r.epochs, r.lr_steps, r.lr_gamma) == (500, 0.001, 12, (8, 11), 0.1)
    assert (r.imgs_per_gpu, r.min_size, r.max_size, r.flip_prob, r.amp) == (2, 800, 1333, 0.5, "none")
    assert r.lr(16) == pytest.approx(0.02) and r.lr(2) == pytest.approx(0.0025)  # linear scaling
    assert all(get_recipe(m).name == m for m in list_models())
    assert get_recipe(ATT).pretrained_backbone == "torchvision" and r.pretrained_backbone is None
    assert tiny_recipe(ATT).pretrained_backbone is None


def test_a_recipe_is_its_model_plus_training():
    r = get_recipe(ATT, "epochs=2")
    assert isinstance(r, ModelConfig) and r.model_config() == ModelConfig.from_name(ATT)
    assert type(r.model_config()) is ModelConfig and r.name == ATT and r.attention_type == "0010"


def test_json_round_trip_and_frozen(tmp_path):
    r = tiny_recipe(ATT, epochs=3, amp="bf16")
    assert (r.backbone.layers, r.backbone.base_width, r.backbone.norm_eval) == ((1, 1, 1, 1), 16, False)
    assert r.backbone.attention_cfg == AttentionConfig(num_heads=8, attention_type="0010")  # the name's, kept
    data = json.loads(json.dumps(r.to_dict()))
    assert data["model"] == ATT and data["backbone"]["attention_cfg"]["attention_type"] == "0010"
    assert Recipe.from_dict(data) == r
    r.save(tmp_path / "recipe.json")
    assert Recipe.load(tmp_path / "recipe.json") == r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 5
    data["backbone"]["attention_cfg"]["attention_type"] = "1111"  # a hand edit that contradicts the name
    with pytest.raises(ValueError, match="'model' says faster_rcnn_r50_fpn_attention_0010_1x_coco but its settings "
                                         "describe faster_rcnn_r50_fpn_attention_1111_1x_coco"):
        Recipe.from_dict(data)


def test_checkpoint_intervals_are_off_by_default_and_set_from_the_command_line():
    assert (Recipe().checkpoint_interval_iters, Recipe().checkpoint_interval_minutes) == (0, 0)
    r = get_recipe(ATT, "checkpoint_interval_iters=1000", "checkpoint_interval_minutes=30", "keep_iter_checkpoints=-1")
    assert (r.checkpoint_interval_iters, r.checkpoint_interval_minutes, r.keep_iter_checkpoints) == (1000, 30.0, -1)


def test_overrides_merge_deeply_and_change_one_leaf():
    r = get_recipe(ATT)
    changed = r.replace("backbone.attention_cfg.impl=chunked", "epochs=2", "lr_steps=[1]", "amp=fp16",
                        "max_iters=null", seed=7)
    assert changed.backbone.attention_cfg == dataclasses.replace(r.backbone.attention_cfg, impl="chunked")
    assert changed.backbone.attention_cfg.num_heads == 8 and changed.backbone.attention_cfg.attention_type == "0010"
    assert (changed.epochs, changed.lr_steps, changed.amp, changed.max_iters, changed.seed) == (2, (1,), "fp16", None, 7)
    # A mapping for a nested record updates it key by key, as --backbone JSON does.
    same = r.replace(backbone={"attention_cfg": {"impl": "chunked"}})
    assert same.backbone.attention_cfg == changed.backbone.attention_cfg and same.backbone.layers == (3, 4, 6, 3)
    assert r.replace(backbone={"layers": [1, 1, 1, 1]}).backbone.layers == (1, 1, 1, 1)  # JSON lists: tuples


@pytest.mark.parametrize("overrides, message", [
    (["epoch=2"], r"recipe: unknown key 'epoch'; valid keys: backbone, heads, min_size, max_size, "
                  r"pretrained_backbone, imgs_per_gpu"),
    (["backbone.attention_cfg.heads=4"], r"recipe\.backbone\.attention_cfg: unknown key 'heads'; valid keys: "
                                         r"spatial_range, num_heads, "),
    (["heads.fpn=4"], r"recipe\.heads: unknown key 'fpn'; valid keys: fpn_channels, representation_size"),
    (["epochs=two"], r"recipe\.epochs: expected an integer, got 'two'"),
    (["backbone.attention_cfg.impl=fast"], r"recipe\.backbone\.attention_cfg: impl must be one of"),
    (["epochs"], "expected key=value"),
])
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        get_recipe(ATT).replace(*overrides)
    assert "\n" not in str(err.value)


def test_unknown_fields_in_files_are_errors():
    with pytest.raises(ValueError, match="unknown key 'lr_stepz'"):
        Recipe.from_dict({"lr_stepz": [1]})


def test_genattn_0_1_recipes_are_read():
    """genattn 0.1 wrote the model as a name, shallow ResNet overrides and detector keyword arguments."""
    old = {"model": ATT, "backbone": {**TINY_BACKBONE, "layers": [1, 1, 1, 1]}, "model_kwargs": {"fpn_channels": 32},
           "pretrained_backbone": None, "min_size": 64, "max_size": 96, "epochs": 3, "lr_steps": [2]}
    r = Recipe.from_dict(old)
    assert r == tiny_recipe(ATT).replace(heads={"fpn_channels": 32}, min_size=64, max_size=96, epochs=3,
                                         lr_steps=(2,), warmup_iters=500, workers=2, log_interval=50)


@pytest.mark.parametrize("change, message", [
    (dict(amp="fp8"), "amp must be one of"), (dict(epochs=0), "epochs"), (dict(imgs_per_gpu=0), "imgs_per_gpu"),
    (dict(nonfinite_loss="ignore"), "nonfinite_loss"), (dict(flip_prob=2.0), "flip_prob"), (dict(device="tpu"), "device"),
    (dict(grad_clip_norm=0), "grad_clip"), (dict(checkpoint_interval_iters=-1), "checkpoint_interval_iters"),
    (dict(checkpoint_interval_minutes=-5), "checkpoint_interval_iters and checkpoint_interval_minutes must be >= 0"),
    (dict(keep_iter_checkpoints=0), r"keep_iter_checkpoints must be >= 1 or -1 \(keep all\), got 0"),
])
def test_bad_values(change, message):
    with pytest.raises(ValueError, match="recipe: " + message):
        Recipe(**change)
    with pytest.raises(ValueError, match="need min_size <= max_size"):
        Recipe(min_size=900, max_size=800)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="recipe file .*none.json: not found"):
        Recipe.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        Recipe.load(tmp_path / "bad.json")
