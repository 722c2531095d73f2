"""``torch.compile(model)`` of a whole (tiny) detector in eval: the detections equal eager's, and images of new
sizes stop compiling new graphs once dynamo has marked the sizes dynamic (the second size).

Cost: one compilation (the ``aot_eager`` backend: dynamo and AOT autograd, with inductor's code generation left
out to keep CI short; the attention module's inductor test is in tests/attention/test_compile_attention.py),
30-60 s on a loaded 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BACKBONE

from genattn.models import get_model

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)


def test_compiled_detector_equals_eager_and_stops_recompiling():
    torch._dynamo.reset()
    torch.manual_seed(0)
    # Random weights and no score threshold: dozens of detections per image to compare. The chunked attention
    # path runs (as its custom op) in the compiled graphs.
    model = get_model("faster_rcnn_r50_fpn_attention_1111_1x_coco", num_classes=2, category_ids=(3, 7),
                      class_names=("a", "b"), min_size=128, max_size=160, fpn_channels=32, representation_size=64,
                      rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_score_thresh=0.0,
                      backbone={**TINY_BACKBONE, "attention_cfg": {"impl": "chunked", "num_heads": 2}}).eval()
    rec = Recorder()
    compiled = torch.compile(model, backend=rec)
    g = torch.Generator().manual_seed(0)
    counts = []
    # Every FPN level at least 2 pixels on every side: a size-1 dimension would be specialised (dynamo's 0/1
    # rule), a size-specific recompile that real images never meet.
    for size in ((120, 160), (160, 110), (140, 140), (100, 150)):
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            got, want = compiled([image])[0], model([image])[0]
        assert got["boxes"].shape[0] > 10
        torch.testing.assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(got["scores"], want["scores"], rtol=0, atol=1e-5)
        assert torch.equal(got["labels"], want["labels"])
        counts.append(rec.graphs)
    torch._dynamo.reset()
    assert counts[3] == counts[2], f"graphs compiled after each image size: {counts}"
