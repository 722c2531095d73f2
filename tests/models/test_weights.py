"""The one weights reader: kinds of files, which model a file holds, safe loading, conversion."""

import numpy as np
import pytest
import torch
import torchvision

from mmdet_files import config_v1, config_v2, write_mmdet
from genattn.models import Classes, ModelConfig, load_model, read_checkpoint
from genattn.models.config import legacy_model_config
from genattn.models.weights import convert_file, load_file

ATT = "faster_rcnn_r50_fpn_attention_0010_1x_coco"
TINY = {"backbone": {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8},
        "heads": {"fpn_channels": 16, "representation_size": 32}, "min_size": 64, "max_size": 64}


def _tiny(name=ATT):
    torch.manual_seed(0)
    config = ModelConfig.from_name(name).updated(TINY)
    model = config.build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.rand_like(p))  # not the initial values: loading must really load
    return config, model


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_kinds(tmp_path):
    config, model = _tiny()
    v2 = write_mmdet(tmp_path / "v2.pth", model.state_dict())
    v1 = write_mmdet(tmp_path / "v1.pth", model.state_dict(), layout="v1")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    ours, _ = convert_file(v2, tmp_path / "ours.pth", model=config)
    kinds = {p: read_checkpoint(tmp_path / p).kind for p in ("v2.pth", "v1.pth", "bare.pth", "resnet.pth", "ours.pth")}
    assert kinds == {"v2.pth": "mmdet-v2", "v1.pth": "mmdet-v1", "bare.pth": "state-dict", "resnet.pth": "imagenet",
                     "ours.pth": "genattn"}
    assert read_checkpoint(ours).config == config and read_checkpoint(ours).classes == Classes.coco()
    assert read_checkpoint(v2).classes == Classes.coco()  # MMDetection's meta['CLASSES'] are COCO's names
    for path in (v2, v1, tmp_path / "bare.pth", ours):
        loaded, _ = load_model(config, path)
        assert _same_weights(loaded, model) and not loaded.training
    with pytest.raises(ValueError, match="resnet.pth: a torchvision ImageNet ResNet, weights of a backbone only"):
        load_model(config, tmp_path / "resnet.pth")


def test_numpy_values_in_meta_load_safely(tmp_path):
    _, model = _tiny()
    meta = {"seed": np.int64(3), "lr": np.float64(0.02), "flag": np.bool_(True), "hist": np.arange(4.0)}
    path = write_mmdet(tmp_path / "np.pth", model.state_dict(), legacy=True, **meta)
    loaded = read_checkpoint(path).content["meta"]
    assert loaded["seed"] == 3 and loaded["lr"] == 0.02 and loaded["flag"] and loaded["hist"].tolist() == [0, 1, 2, 3]
    # Files written under numpy 1 name numpy.core, not numpy._core: rewrite the pickle's global names so.
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    old = tmp_path / "numpy1.pth"
    old.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert read_checkpoint(old).content["meta"]["lr"] == 0.02
    # Anything that needs code to rebuild is still refused.
    torch.save({"state_dict": model.state_dict(), "meta": {"hook": torch.nn.ReLU()}}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match=r"code\.pth: holds a torch\.nn\.modules\.activation\.ReLU object, which "
                                         r"only running code could rebuild; refused"):
        read_checkpoint(tmp_path / "code.pth")


def test_which_model_a_file_holds(tmp_path):
    config, model = _tiny()
    released = tmp_path / "faster_rcnn_r50_fpn_attention_0010_1x_coco_20200130-7cb0c14d.pth"
    write_mmdet(released, model.state_dict())
    renamed = write_mmdet(tmp_path / "epoch_12.pth", model.state_dict())
    # the file name names the model; the caller's details (a tiny backbone) build it
    assert load_model(None, released, changes=TINY)[1] == config
    with pytest.raises(ValueError, match=r"holds faster_rcnn_r50_fpn_attention_0010_1x_coco \(from its file name\), "
                                         r"not faster_rcnn_r50_fpn_attention_1111_1x_coco \(rename the file"):
        load_model("faster_rcnn_r50_fpn_attention_1111_1x_coco", released, changes=TINY)
    with pytest.raises(ValueError, match=r"epoch_12\.pth: cannot tell the model .*--model NAME"):
        load_model(None, renamed)
    assert _same_weights(load_model(config, renamed)[0], model)
    # a genattn file records its model: nothing else is needed, and another name is refused
    ours, _ = convert_file(renamed, tmp_path / "ours.pth", model=config)
    assert load_model(None, ours)[1] == config
    with pytest.raises(ValueError, match=r"holds faster_rcnn_r50_fpn_attention_0010_1x_coco \(from its config\), "
                                         r"not faster_rcnn_r50_fpn_1x_coco$"):
        load_model("faster_rcnn_r50_fpn_1x_coco", ours)
    # changes apply on top of the file's model (a runtime setting here)
    assert load_model(None, ours, impl="chunked")[1].backbone.attention_cfg.impl == "chunked"


def test_classes_of_a_genattn_file_are_its_own(tmp_path):
    config = ModelConfig.from_name(ATT).updated(TINY)
    classes = Classes((3, 7), ("red", "blue"))
    model = config.build(classes)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    ours, _ = convert_file(tmp_path / "bare.pth", tmp_path / "ours.pth", model=config)  # bare: 2 classes, ids 1, 2
    assert read_checkpoint(ours).classes == Classes((1, 2), ("class_1", "class_2"))
    loaded, _ = load_model(config, tmp_path / "bare.pth", classes=classes)  # a file without a record takes them
    assert loaded.category_ids == (3, 7)
    with pytest.raises(ValueError, match=r"ours\.pth: predicts categories \[1, 2\], not the ones asked for \[3, 7\]"):
        load_model(None, ours, classes=classes)


def test_genattn_0_1_files_are_read(tmp_path):
    config, model = _tiny()
    recipe = {"model": ATT, "backbone": dict(TINY["backbone"]), "model_kwargs": dict(TINY["heads"]),
              "min_size": 64, "max_size": 64, "epochs": 12}
    meta = {"category_ids": list(Classes.coco().category_ids), "class_names": list(Classes.coco().names)}
    torch.save({"format": "genattn-checkpoint-v1", "model": model.state_dict(), "recipe": recipe, "meta": meta},
               tmp_path / "old.pth")
    ckpt = read_checkpoint(tmp_path / "old.pth")
    assert ckpt.kind == "genattn" and ckpt.config == config == legacy_model_config(recipe)
    assert _same_weights(load_model(None, ckpt)[0], model)
    torch.save({"format": "genattn-checkpoint-v9", "model": model.state_dict()}, tmp_path / "new.pth")
    with pytest.raises(ValueError, match="new.pth: format 'genattn-checkpoint-v9' is not one this genattn reads"):
        read_checkpoint(tmp_path / "new.pth")


def _full_size(name, layout):
    """An MMDetection-layout state dict of the full-size model (zeros: only the layout matters)."""
    return {k: torch.zeros_like(v) for k, v in ModelConfig.from_name(name).build().state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("name, layout, make", [
    ("faster_rcnn_r50_fpn_attention_1111_dcn_1x_coco", "v2", config_v2),
    ("faster_rcnn_r50_fpn_attention_0010_dcn_1x_coco", "v1", config_v1),
])
def test_renamed_mmdet_files_are_identified_by_their_config(tmp_path, name, layout, make):
    torch.set_num_threads(1)
    config = ModelConfig.from_name(name)
    att, dcn = config.attention_type, config.dcn
    path = write_mmdet(tmp_path / "latest.pth", _full_size(name, layout), config=make(att, dcn), layout=layout)
    out, found = convert_file(path, tmp_path / "ours.pth")  # strict: every key accounted for
    assert found == config and read_checkpoint(out).config == config
    other = "faster_rcnn_r50_fpn_attention_1111_1x_coco"
    with pytest.raises(ValueError, match=f"latest.pth holds {name} \\(from its config\\), not {other}"):
        convert_file(path, tmp_path / "refused.pth", model=other)
    assert not (tmp_path / "refused.pth").exists()


def test_a_config_holding_code_is_read_not_run(tmp_path):
    config, model = _tiny()
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    text = f"{code}\n" + config_v2("0010", False).replace("pretrained='torchvision://resnet50'", f"pretrained={code}")
    path = write_mmdet(tmp_path / "latest.pth", model.state_dict(), config=text)
    assert read_checkpoint(path).config == ModelConfig.from_name(ATT)  # identified from the literals around the code
    bad = write_mmdet(tmp_path / "bad.pth", model.state_dict(),
                      config=config_v2("0010", False).replace("'0010'", code))
    with pytest.raises(ValueError, match=r"bad\.pth: its config describes a model genattn does not build"):
        convert_file(bad, tmp_path / "out.pth", changes=TINY)
    assert not marker.exists()
