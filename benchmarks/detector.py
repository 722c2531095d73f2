"""Inference speed and training memory of the seed's detectors, as a Markdown table naming the device.

Runs :func:`genattn.app.bench.benchmark` (batch-1 median fps; peak training memory) for each model and prints
the ratios the project's targets are stated in: '1111' time over the baseline's, '1111' memory over '0010''s.

    python benchmarks/detector.py                       # the seed's models at 800x1333 (slow on a CPU)
    python benchmarks/detector.py --images 5 --memory-steps 1 --batch-size 1 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from genattn.app.bench import benchmark  # noqa: E402
from genattn.models import ModelConfig  # noqa: E402
from genattn.models.zoo import study_models  # noqa: E402

MODELS = study_models()  # baseline, '0010', '1111'


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--images", type=int, default=10, help="timed images per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--memory-steps", type=int, default=2, help="0 skips the memory measurement")
    p.add_argument("--batch-size", type=int, default=2, help="training batch of the memory measurement")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    results = []
    for name in args.models:
        r = benchmark(name, device=args.device, num_images=args.images, warmup=args.warmup,
                      input_size=tuple(args.input_size), memory_steps=args.memory_steps,
                      batch_size=args.batch_size, threads=args.threads, progress=True)
        results.append(r)
        print(f"{name}: {r.fps:.2f} fps, {r.mem_gb or float('nan'):.2f} GB", file=sys.stderr)

    by_type = {ModelConfig.from_name(r.model).attention_type: r for r in results}
    print(f"Device: {results[0].device_name}; input {args.input_size[0]}x{args.input_size[1]} resized by the "
          f"model; batch 1, median of {args.images} after {args.warmup} warm-up; memory: {results[0].mem_method}"
          f" (batch {args.batch_size}, {args.memory_steps} steps)\n")
    print("| model | fps | median (ms) | train mem (GB) |\n|---|---:|---:|---:|")
    for r in results:
        mem = f"{r.mem_gb:.2f}" if r.mem_gb is not None else "-"
        print(f"| {r.model} | {r.fps:.2f} | {r.median_ms:.0f} | {mem} |")
    base, k0010, k1111 = (by_type.get(t) for t in (None, "0010", "1111"))
    if base and k1111:
        print(f"\n'1111' inference time / baseline's: {k1111.median_ms / base.median_ms:.2f}x")
    if k0010 and k1111 and k0010.mem_gb and k1111.mem_gb:
        print(f"'1111' training memory / '0010''s: {k1111.mem_gb / k0010.mem_gb:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
