"""Which model a command builds: released file names, renamed files, and settings merged key by key.

The first three tests are the three everyday commands that failed before models had one record (issue 9).
"""

import json

import pytest
import torch

from cli_checks import one_error_line
from genattn.app.cli import main
from genattn.attention import AttentionConfig
from genattn.data.synthetic import ensure_shapes_dataset
from genattn.models import MODELS, ModelConfig, load_model, read_checkpoint

TINY_BACKBONE = {"layers": [1, 1, 1, 1], "base_width": 8, "stem_width": 8}
TINY = ["--backbone", json.dumps(TINY_BACKBONE), "--set", "heads.fpn_channels=16", "heads.representation_size=32",
        "min_size=64", "max_size=64"]


def _mmdet_layout(state):
    import re

    return {re.sub(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.", r"neck.\1.\2.conv.", k): v for k, v in state.items()}



@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", num_train=4, num_val=2, image_size=64)


@pytest.mark.slow
def test_convert_a_released_file_with_a_hyphen_in_its_name(tmp_path, monkeypatch, capsys):
    """genattn convert faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco_20200130-d68aed1e.pth out.pth (full size)."""
    torch.set_num_threads(1)
    name = "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco"
    state = {k: torch.zeros_like(v) for k, v in ModelConfig.from_name(name).build().state_dict().items()}
    monkeypatch.chdir(tmp_path)
    torch.save({"meta": {"mmdet_version": "2.0.0"}, "state_dict": _mmdet_layout(state)},
               f"{name}_20200130-d68aed1e.pth")
    assert main(["convert", f"{name}_20200130-d68aed1e.pth", "out.pth"]) == 0
    assert f"({name})" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "out.pth").config == ModelConfig.from_name(name)


@pytest.mark.parametrize("how", ["backbone", "set"])
def test_one_attention_setting_changes_and_the_rest_stays(shapes, tmp_path, how, capsys):
    """genattn train ..._0010_... --tiny --backbone '{"attention_cfg": {"impl": "chunked"}}' (or
    --set backbone.attention_cfg.impl=chunked) trains '0010' with 8 heads on the chunked path."""
    change = (["--backbone", '{"attention_cfg": {"impl": "chunked"}}'] if how == "backbone" else
              ["--set", "backbone.attention_cfg.impl=chunked"])
    work = tmp_path / "run"
    assert main(["train", "faster_rcnn_r50_fpn_attention_0010_1x_coco", "--data", str(shapes.root), "--tiny",
                 "--max-iters", "1", "--image-size", "64", "--work-dir", str(work), *change]) == 0, \
        capsys.readouterr().err
    expected = AttentionConfig(num_heads=8, kv_stride=2, attention_type="0010", impl="chunked")
    saved = json.loads((work / "recipe.json").read_text())
    assert saved["model"] == "faster_rcnn_r50_fpn_attention_0010_1x_coco"
    assert AttentionConfig.from_dict(saved["backbone"]["attention_cfg"]) == expected
    assert saved["backbone"]["layers"] == [1, 1, 1, 1]  # --tiny's backbone kept: merged, not replaced
    model, config = load_model(None, json.loads(capsys.readouterr().out.splitlines()[-1])["checkpoint"])
    blocks = [m for m in model.modules() if type(m).__name__ == "GeneralizedAttention"]
    assert blocks and all((b.attention_type, b.num_heads, b.impl) == ("0010", 8, "chunked") for b in blocks)


@pytest.mark.parametrize("argv, message", [
    (["--set", "backbone.attention_cfg.imp=chunked"],
     "recipe.backbone.attention_cfg: unknown key 'imp'; valid keys: spatial_range, num_heads, position_embedding_dim"),
    (["--backbone", '{"attention": {"impl": "chunked"}}'], "recipe.backbone: unknown key 'attention'; valid keys: "
                                                          "layers, base_width"),
    (["--set", "backbone.attention_cfg.num_heads=two"], "recipe.backbone.attention_cfg.num_heads: expected an "
                                                        "integer, got 'two'"),
])
def test_bad_settings_are_one_line_errors(shapes, argv, message, capsys):
    line = one_error_line(capsys, main(["train", "faster_rcnn_r50_fpn_attention_0010_1x_coco", "--data",
                                         str(shapes.root), "--tiny", "--max-iters", "1", *argv]))
    assert message in line


@pytest.mark.parametrize("name", list(MODELS))
def test_every_zoo_model_converts_from_its_released_file_name(name, tmp_path, capsys):
    config = ModelConfig.from_name(name).updated({"backbone": TINY_BACKBONE, "min_size": 64, "max_size": 64,
                                                  "heads": {"fpn_channels": 16, "representation_size": 32}})
    torch.manual_seed(0)
    model = config.build()
    released = tmp_path / MODELS[name].url.rsplit("/", 1)[1]
    torch.save({"meta": {"mmdet_version": "2.0.0"}, "state_dict": _mmdet_layout(model.state_dict())}, released)
    assert main(["convert", str(released), str(tmp_path / "out.pth"), *TINY]) == 0
    loaded, found = load_model(None, tmp_path / "out.pth")
    assert found == config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    # --model may repeat the file's model, not contradict it
    assert main(["convert", str(released), str(tmp_path / "out2.pth"), "--model", name, *TINY]) == 0
    other = "faster_rcnn_r50_fpn_attention_0100_1x_coco"
    line = one_error_line(capsys, main(["convert", str(released), str(tmp_path / "out3.pth"), "--model", other,
                                         *TINY]))
    assert f"holds {name} (from its file name), not {other}" in line


def test_impl_flag_sets_every_block(shapes, tmp_path, capsys):
    image = str(shapes.val_images / "000000000001.jpg")
    assert main(["detect", "faster_rcnn_r50_fpn_attention_1111_1x_coco", image, "--impl", "materialize",
                 "--out", str(tmp_path), *TINY]) == 0
    line = one_error_line(capsys, main(["detect", "faster_rcnn_r50_fpn_attention_1111_1x_coco", image,
                                         "--impl", "separable", *TINY]))
    assert "impl='separable' needs attention_type '0001'" in line
