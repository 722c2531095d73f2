"""genattn's NMS operator: torchvision's result, a shape rule that lets traced graphs keep 0 or 1 boxes, and the
class-wise form."""

import torch
import torchvision

from genattn.models.nms import batched_nms, nms


def _boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 50
    return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=generator) * 20], 1)


def test_nms_is_torchvisions_and_passes_opcheck():
    g = torch.Generator().manual_seed(0)
    boxes, scores = _boxes(40, g), torch.rand(40, generator=g)
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.genattn.nms.default, (boxes, scores, 0.5))
    empty = nms(boxes[:0], scores[:0], 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long


def test_batched_nms_keeps_groups_apart():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    # box 1 overlaps box 0 exactly but is in another group; box 2 is box 0's group and suppressed
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [0, 1, 3]


class _ClassNMS(torch.nn.Module):
    def forward(self, boxes, scores, groups):
        return batched_nms(boxes, scores, groups, 0.5)


def test_exported_nms_runs_when_it_keeps_fewer_than_two_boxes():
    """torchvision's own shape rule says NMS keeps at least two boxes: an exported graph with it asserts that at
    run time. genattn's operator says zero or more."""
    g = torch.Generator().manual_seed(0)
    boxes, scores, groups = _boxes(6, g), torch.rand(6, generator=g), torch.tensor([0, 1, 0, 1, 0, 1])
    k = torch.export.Dim("k", min=1)
    program = torch.export.export(_ClassNMS(), (boxes, scores, groups),
                                  dynamic_shapes=({0: k}, {0: k}, {0: k}), strict=False).module()
    model = _ClassNMS()
    for n in (6, 3, 1):
        assert torch.equal(program(boxes[:n], scores[:n], groups[:n]), model(boxes[:n], scores[:n], groups[:n]))
    # two identical boxes of one group: one is kept
    same = boxes[:1].repeat(2, 1)
    assert program(same, scores[:2], groups[:1].repeat(2)).tolist() == [int(scores[1] > scores[0])]
