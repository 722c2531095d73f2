"""--compile on detect and bench: the model runs through torch.compile (dynamo graphs are traced and run) and
gives eager's detections; bench reports the first call, which includes the compilation. (test --compile: in
tests/engine/test_test.py.)

Cost: about 10-20 s (dynamo traces a tiny detector; the eager backend generates no code).
"""

import json

import numpy as np
import torch
from PIL import Image

from cli_checks import one_error_line
from genattn.app.cli import main

BASE = "faster_rcnn_r50_fpn_attention_1111_1x_coco"
TINY = ["--backbone", '{"layers": [1, 1, 1, 1], "base_width": 8, "stem_width": 8, '
        '"attention_cfg": {"num_heads": 2}}', "--image-size", "64",
        "--set", "heads.fpn_channels=16", "heads.representation_size=32", "heads.box_score_thresh=0.0"]


def test_detect_compiled_gives_eagers_detections(tmp_path, eager_compile):
    rng = np.random.default_rng(0)
    for name, size in (("1.png", (48, 64)), ("2.png", (64, 40))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    torch.manual_seed(0)  # random weights: the same for both runs
    assert main(["detect", BASE, str(tmp_path / "*.png"), *TINY, "--out", str(tmp_path / "eager"),
                 "--no-pictures"]) == 0
    assert eager_compile[0] == 0
    torch.manual_seed(0)
    assert main(["detect", BASE, str(tmp_path / "*.png"), *TINY, "--out", str(tmp_path / "compiled"),
                 "--no-pictures", "--compile"]) == 0
    assert eager_compile[0] > 0  # the detector ran as dynamo graphs
    want = json.loads((tmp_path / "eager" / "detections.json").read_text())
    got = json.loads((tmp_path / "compiled" / "detections.json").read_text())
    assert len(want) > 10 and len(got) == len(want)
    for g, w in zip(got, want):
        assert g["image_id"] == w["image_id"] and g["category_id"] == w["category_id"]
        np.testing.assert_allclose(g["bbox"], w["bbox"], rtol=0, atol=1e-3)
        assert abs(g["score"] - w["score"]) < 1e-5


def test_bench_compiled_reports_its_first_call(tmp_path, eager_compile, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", BASE, *TINY, "--images", "2", "--warmup", "1", "--input-size", "48", "64",
                 "--memory-steps", "0", "--compile", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["compiled"] is True and result["first_call_s"] > 0 and result["num_images"] == 2
    assert eager_compile[0] > 0
    assert "torch.compile: first call" in capsys.readouterr().out
    # the first call compiles: it cannot be a timed one
    err = one_error_line(capsys, main(["bench", BASE, *TINY, "--warmup", "0", "--compile"]))
    assert "compile needs warmup >= 1" in err


def test_train_has_no_compile_flag(capsys):
    # only the inference subcommands compile; train refuses the flag rather than ignoring it
    err = one_error_line(capsys, main(["train", BASE, "--data", "shapes", "--compile"]))
    assert "unrecognized arguments: --compile" in err
