"""Export: ``genattn export`` of a tiny trained detector; ONNX Runtime and the loaded ``.pt2`` against eager.

Cost (measured on the 2-core CPU shared with other jobs, load average 3-4): the session's tiny training and one
export (torch.export + ONNX) in the fixtures, 170 s; loading and running the .pt2, 42 s; the rest, 3 s. At load
average 6 the same took 435 s and 121 s.
"""

import sys

import numpy as np
import onnxruntime as ort  # the test extra installs it
import pytest
import torch
from torchvision.ops import box_iou

from genattn.app.cli import main
from genattn.models import ModelConfig, load_program
from genattn.models.export import _exportable, _float64_symbols, export_onnx
from genattn.models.transform import resized_size
from genattn.models.weights import atomic_save, genattn_record
from trained_tiny import CLASSES, MODEL, picture


@pytest.fixture(scope="module")
def trained(trained_detector):
    return trained_detector


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    model, config = trained
    root = tmp_path_factory.mktemp("export")
    checkpoint = atomic_save(genattn_record(model.state_dict(), config, CLASSES), root / "tiny.pth")
    assert main(["export", MODEL, "--checkpoint", str(checkpoint), "--out", str(root / "tiny")]) == 0
    return root / "tiny.onnx", root / "tiny.pt2", checkpoint


def _images():
    """Two sizes, landscape and portrait (neither the export's example size), with objects on a noisy
    background (no exact ties between scores, see ``picture``)."""
    rng = np.random.default_rng(3)
    return [picture(rng, (90, 120), noise=12)[0], picture(rng, (141, 77), noise=12)[0]]


def _eager(model, image):
    with torch.no_grad():
        det = model([image])[0]
    return det["boxes"], det["scores"], det["labels"]


def _assert_same_detections(ref, out, min_score=0.4):
    """Every detection of either side scoring at least ``min_score`` has one on the other with the same class,
    IoU >= 0.98 and a score within 1e-3.

    Below that, detections may differ by float noise: ONNX Runtime's convolutions differ from PyTorch's by up to
    ~3e-5 in the RPN's logits (measured), which reorders anchors of nearly equal score around the RPN's per-level
    top-1000 cut, so a few different proposals reach the box head and a few weak detections change (a 1e-6
    perturbation of the features changes none in PyTorch; the loaded .pt2 is compared in full below).
    """
    for (b1, s1, l1), (b2, s2, l2) in ((ref, out), (out, ref)):
        assert (s1 >= min_score).sum() > 0
        iou = box_iou(b1, b2) if len(b2) else torch.zeros(len(b1), 0)
        for i in torch.nonzero(s1 >= min_score).flatten().tolist():
            ok = (l2 == l1[i]) & (iou[i] >= 0.98) & ((s2 - s1[i]).abs() <= 1e-3)
            assert ok.any(), (i, b1[i], s1[i], l1[i])


def test_onnx_runtime_gives_pytorchs_detections_at_two_sizes(trained, exported):
    model, _ = trained
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    for image in _images():
        ref = _eager(model, image)
        out = [torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()})]
        assert out[0].dtype == torch.float32 and out[2].dtype == torch.int64
        assert set(out[2].tolist()) <= {3, 7}  # dataset category ids
        _assert_same_detections(ref, out)


def test_saved_program_loads_and_equals_eager(trained, exported):
    model, _ = trained
    program = load_program(exported[1])
    for image in _images():
        ref = _eager(model, image)
        out = program(image)
        torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-4)
        torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-5)
        assert torch.equal(out[2], ref[2])


def test_export_of_an_unknown_model_is_one_line(exported, tmp_path, capsys):
    assert main(["export", "no_such_model", "--checkpoint", str(exported[2]), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'no_such_model'" in err[0], err
    assert not list(tmp_path.iterdir())


def test_export_without_the_onnx_packages_is_one_line(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    assert main(["export", MODEL, "--checkpoint", str(exported[2]), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'genattn[export]'" in err[0], err
    assert not list(tmp_path.iterdir())  # checked before tracing


def test_onnx_size_arithmetic_is_float64(tmp_path):
    # 29x2494 -> MMDetection's rule in float64 gives 15x1333; in float32 (the exporter's own translation) 16x1333.
    # And Python's floor division of a negative size (ONNX's integer Div truncates): -(-29 // 32) is 1, not 0.
    class Sizes(torch.nn.Module):
        def forward(self, image):
            return torch.zeros(resized_size(image.shape[1], image.shape[2], 800, 1333)), torch.zeros(
                -(-image.shape[1] // 32))

    dims = {"image": {1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC}}
    program = torch.onnx.export(Sizes(), (torch.zeros(3, 30, 40, dtype=torch.uint8),), dynamic_shapes=dims,
                                dynamo=True, custom_translation_table=_float64_symbols(), verbose=False)
    assert len(program.model.graph.outputs) == 2
    program.save(tmp_path / "sizes.onnx")
    session = ort.InferenceSession(str(tmp_path / "sizes.onnx"), providers=["CPUExecutionProvider"])
    for hw in ((29, 2494), (37, 2294), (480, 640), (2, 3000)):
        out, blocks = session.run(None, {session.get_inputs()[0].name: np.zeros((3, *hw), np.uint8)})
        assert out.shape == resized_size(*hw, 800, 1333) and blocks.shape == (-(-hw[0] // 32),)
    assert resized_size(29, 2494, 800, 1333) == (15, 1333)


def test_export_sets_traceable_paths_and_restores_the_model():
    torch.manual_seed(0)
    model = ModelConfig.from_name(MODEL).updated({"backbone": {"layers": (1, 1, 1, 1), "base_width": 8,
                                                               "stem_width": 8}}).build().train()
    blocks = [m for n, m in model.named_modules() if n.endswith("gen_attention_block")]
    assert blocks and {m.impl for m in blocks} == {"auto"}
    with _exportable(model):
        assert {m.impl for m in blocks} == {"sdpa"} and not model.training
    assert {m.impl for m in blocks} == {"auto"} and model.training
    blocks[0].impl = "chunked"
    with pytest.raises(ValueError, match="impl 'chunked' cannot be exported"):
        with _exportable(model):
            pass
    assert blocks[0].impl == "chunked"


def test_export_refuses_a_half_model(tmp_path):
    model = ModelConfig.from_name("faster_rcnn_r50_fpn_1x_coco").updated(
        {"backbone": {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8}}).build().eval().half()
    with pytest.raises(ValueError, match="float32 weights"):
        export_onnx(model, tmp_path / "m.onnx")


def test_an_export_failure_on_an_untested_torch_names_the_version(monkeypatch):
    import genattn.models.export as export

    def fail(*args, **kwargs):
        raise TypeError("BooleanAtom not allowed in this context.\nmore lines")  # as torch 2.9.1 raises

    model = ModelConfig.from_name("faster_rcnn_r50_fpn_1x_coco").updated(
        {"backbone": {"layers": (1, 1, 1, 1), "base_width": 8, "stem_width": 8}}).build().eval()
    monkeypatch.setattr(torch.export, "export", fail)
    monkeypatch.setattr(export, "_torch_release", lambda: (2, 9))
    message = r"torch .*\(TypeError: BooleanAtom .*tested with torch 2\.14 .*upgrade"
    with pytest.raises(RuntimeError, match=message) as e:
        export.export_program(model)
    assert "\n" not in str(e.value)  # one line on the command line
    monkeypatch.setattr(export, "_torch_release", lambda: (2, 14))
    with pytest.raises(TypeError, match="BooleanAtom"):  # on a tested release the exporter's own error
        export.export_program(model)
