"""Timing helpers of genattn.app.bench (what is called and in which order; no timing thresholds)."""

import torch

from genattn.app import bench


class _Recorder(torch.nn.Module):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, images):
        self.log.append((self.name, int(images[0][0, 0, 0])))
        return [{}]


def test_interleaved_speed_times_models_in_turn_after_their_warmup():
    log = []
    models = [_Recorder("a", log), _Recorder("b", log)]
    images = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(3)]
    speeds = bench.interleaved_speed(models, images, warmup=1)
    # one untimed call each, then image by image through every model
    assert log == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [len(s["times_s"]) for s in speeds] == [3, 3]
    for s in speeds:
        assert s["median_s"] == sorted(s["times_s"])[1] and s["fps"] == 1 / s["median_s"]
