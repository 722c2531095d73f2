"""torch.compile against eager inference of the seed's detectors on a CPU: compile time and time per image.

For each model (random weights, eval, batch 1): the first call of ``torch.compile(model)`` (``--part model``,
the default) or of ``torch.compile(model.backbone)`` (``--part backbone``) is timed as the compile time; then
eager and compiled calls alternate on the same images (so that drift in a shared machine's load hits both
alike), after ``--warmup`` untimed rounds, and the medians are reported. One JSON line per model on stdout, with
the machine's load average before and after, the number of graphs dynamo compiled and its graph breaks, and how
well the outputs agree (the share of eager's detections that the compiled model gives too, or the largest relative
difference of the backbone features).

    python benchmarks/compile.py --threads 1                    # baseline, '0010', '1111' at 480x640 -> 800x1067
    python benchmarks/compile.py --image-size 512 853 --part backbone
    python benchmarks/compile.py --tiny                         # smoke run: tiny models on 64 px images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from genattn.app.bench import device_name  # noqa: E402
from genattn.models import get_model  # noqa: E402
from genattn.models.transform import resized_size  # noqa: E402
from genattn.models.zoo import study_models  # noqa: E402

TINY = {"min_size": 64, "max_size": 96, "fpn_channels": 32, "representation_size": 64,
        "backbone": {"layers": (1, 1, 1, 1), "base_width": 16, "stem_width": 16}}


def _agreement(compiled, eager) -> float:
    """Detections: the fraction of eager's detections that the compiled model also gives (same class, IoU >=
    0.98, score within 1e-3). Backbone features: the largest difference relative to the largest magnitude."""
    if isinstance(eager[0], dict):
        got, want = compiled[0], eager[0]
        if want["boxes"].shape[0] == 0:
            return float(got["boxes"].shape[0] == 0)
        match = ((box_iou(want["boxes"], got["boxes"]) >= 0.98)
                 & (want["labels"][:, None] == got["labels"][None])
                 & ((want["scores"][:, None] - got["scores"][None]).abs() <= 1e-3))
        return float(match.any(1).float().mean())
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(compiled, eager))


def run(name: str, args) -> dict:
    torch.manual_seed(0)
    kwargs = dict(TINY) if args.tiny else {}
    if args.image_size:
        kwargs.update(min_size=args.image_size[0], max_size=args.image_size[1])
    model = get_model(name, **kwargs).eval()
    h, w = args.input_size
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
              for _ in range(args.warmup + args.images)]
    if args.part == "backbone":
        eager = model.backbone
        with torch.no_grad():
            inputs = [model.transform([im])[0].tensors for im in images]
    else:
        eager = model
        inputs = [[im] for im in images]
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(eager, dynamic=args.dynamic)
    load_before = os.getloadavg()[0]
    with torch.no_grad():
        start = time.perf_counter()
        compiled(inputs[0])
        compile_s = time.perf_counter() - start
        times = {"eager": [], "compiled": []}
        agreement = []
        for i, x in enumerate(inputs):
            outs = {}
            for label, fn in (("eager", eager), ("compiled", compiled)):
                start = time.perf_counter()
                outs[label] = fn(x)
                if i >= args.warmup:
                    times[label].append(time.perf_counter() - start)
            agreement.append(_agreement(outs["compiled"], outs["eager"]))
    eager_ms = 1000 * statistics.median(times["eager"])
    compiled_ms = 1000 * statistics.median(times["compiled"])
    return {"model": name, "part": args.part, "device": device_name(torch.device("cpu")),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "input": [h, w],
            "resized": list(resized_size(h, w, model.transform.min_size, model.transform.max_size)),
            "compile_s": round(compile_s, 1), "eager_ms": round(eager_ms, 1), "compiled_ms": round(compiled_ms, 1),
            "speedup": round(eager_ms / compiled_ms, 3), "images": args.images,
            "graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
            # detections: the worst image's share of eager's detections matched; features: the largest difference
            "agreement": min(agreement) if args.part == "model" else max(agreement),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(study_models()))
    p.add_argument("--part", choices=("model", "backbone"), default="model")
    p.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--image-size", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="the models' resize limits (default theirs: 800 1333)")
    p.add_argument("--images", type=int, default=3, help="timed images per model")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed rounds after the compiling call (data-dependent sizes recompile once or twice)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dynamic", action="store_true", default=None,
                   help="torch.compile(dynamic=True) (default: dynamo's own choice)")
    p.add_argument("--tiny", action="store_true", help="smoke run: tiny models and images")
    args = p.parse_args(argv)
    if args.tiny and args.input_size == (480, 640):
        args.input_size = (48, 64)
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        print(json.dumps(run(name, args)), flush=True)


if __name__ == "__main__":
    main()
