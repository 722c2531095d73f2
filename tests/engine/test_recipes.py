import dataclasses
import json

import pytest

from genattn.recipes import SEED_MODELS, TINY_BACKBONE, Recipe, get_recipe, tiny_recipe


def test_defaults_are_mmdetection_1x():
    r = Recipe()
    assert (r.base_lr, r.base_batch_size, r.momentum, r.weight_decay) == (0.02, 16, 0.9, 1e-4)
    assert (r.warmup_iters, r.warmup_ratio, r.epochs, r.lr_steps, r.lr_gamma) == (500, 0.001, 12, (8, 11), 0.1)
    assert (r.imgs_per_gpu, r.min_size, r.max_size, r.flip_prob, r.amp) == (2, 800, 1333, 0.5, "none")
    assert r.lr(16) == pytest.approx(0.02) and r.lr(2) == pytest.approx(0.0025)  # linear scaling
    assert all(get_recipe(m).model == m for m in SEED_MODELS)
    assert get_recipe(SEED_MODELS[0]).pretrained_backbone == "torchvision" and r.pretrained_backbone is None
    assert tiny_recipe(SEED_MODELS[0]).pretrained_backbone is None


def test_json_round_trip_and_frozen(tmp_path):
    r = tiny_recipe("faster_rcnn_r50_fpn_attention_0010_1x_coco", epochs=3, amp="bf16")
    assert r.backbone == TINY_BACKBONE and isinstance(r.backbone["layers"], tuple)
    text = json.dumps(r.to_dict())
    assert Recipe.from_dict(json.loads(text)) == r
    r.save(tmp_path / "recipe.json")
    assert Recipe.load(tmp_path / "recipe.json") == r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 5


def test_command_line_overrides():
    r = Recipe().replace("epochs=2", "lr_steps=[1]", "amp=fp16", "backbone.layers=[1,1,1,1]", "max_iters=null",
                         seed=7)
    assert (r.epochs, r.lr_steps, r.amp, r.backbone, r.max_iters, r.seed) == (2, (1,), "fp16",
                                                                             {"layers": (1, 1, 1, 1)}, None, 7)
    with pytest.raises(ValueError, match="unknown field 'epoch'"):
        Recipe().replace("epoch=2")
    with pytest.raises(ValueError, match="expected key=value"):
        Recipe().replace("epochs")
    with pytest.raises(ValueError, match="unknown field"):
        Recipe.from_dict({"lr_stepz": [1]})


@pytest.mark.parametrize("change, message", [
    (dict(amp="fp8"), "amp must be one of"), (dict(epochs=0), "epochs"), (dict(imgs_per_gpu=0), "imgs_per_gpu"),
    (dict(min_size=900, max_size=800), "need 1 <= min_size"), (dict(nonfinite_loss="ignore"), "nonfinite_loss"),
    (dict(flip_prob=2.0), "flip_prob"), (dict(device="tpu"), "device"), (dict(grad_clip_norm=0), "grad_clip"),
])
def test_bad_values(change, message):
    with pytest.raises(ValueError, match="recipe: " + message):
        Recipe(**change)


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="recipe file .*none.json: not found"):
        Recipe.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="malformed JSON"):
        Recipe.load(tmp_path / "bad.json")
