"""Speed and memory of GeneralizedAttention's computation paths at ResNet-50's attention shapes.

Shapes (an 800x1333 image; the attention sits after conv2 of every layer3/layer4 bottleneck): stage 3, 256
channels at 50x84; stage 4, 512 channels at 25x42. Batch 2, 8 heads, kv_stride 2, float32, gamma = 1.

For every (shape, attention type, path) the script reports the median time and the peak memory of
* forward: inference, under ``torch.no_grad()``;
* forward+backward: ``module(x).sum().backward()`` with ``x.requires_grad``,
and the ratios against the ``materialize`` path (the original algorithm: full energy), the yardstick.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory held before the step. On CPU, each
case's memory is read in a fresh subprocess (separate from the one that times it) with glibc's
``MALLOC_MMAP_THRESHOLD_=65536`` (so every tensor above 64 KiB is its own mapping, returned to the OS when
freed), the kernel's peak-RSS counter is reset through ``/proc/self/clear_refs`` after a warm-up, and the peak
is ``VmHWM`` minus ``VmRSS`` at the reset: the memory the step needed on top of its inputs and weights
(tracemalloc cannot see torch's allocations).

Usage::

    python benchmarks/attention.py                # CPU, and CUDA when present; Markdown table to stdout
    python benchmarks/attention.py --quick        # smoke run: 1 warm-up, 2 timed repeats
    python benchmarks/attention.py --types 1111 --shapes stage3 --json out.json
    python benchmarks/attention.py --rounds 3      # every case timed 3 times in turn: steadier on shared machines
    python benchmarks/attention.py --device cuda --jsonl rows.jsonl   # each case's row appended when measured
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {"stage3": (256, 50, 84), "stage4": (512, 25, 42), "tiny": (32, 10, 12)}  # tiny: smoke runs only
DEFAULT_SHAPES = ("stage3", "stage4")
TYPES = ("1111", "0010", "1000", "0100", "0001")
BATCH, HEADS, KV_STRIDE = 2, 8, 2


def _import_genattn():
    """Benchmark the checkout this script belongs to, not whatever genattn happens to be installed."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    if os.path.isdir(os.path.join(src, "genattn")):
        sys.path.insert(0, src)


def measure_case(device: str, shape: str, attention_type: str, impl: str, warmup: int, repeats: int,
                 threads: int) -> dict:
    """Time and peak memory of one case in this process (CPU: call in a fresh subprocess)."""
    import torch

    _import_genattn()
    from genattn.attention import GeneralizedAttention
    from genattn.attention import paths
    from genattn.app.bench import cuda_peak_bytes, status_kib

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    channels, height, width = SHAPES[shape]
    m = GeneralizedAttention(channels, num_heads=HEADS, kv_stride=KV_STRIDE, attention_type=attention_type,
                             impl=impl).to(device)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.randn(BATCH, channels, height, width, device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            m(x)

    def forward_backward():
        xg = x.detach().requires_grad_()
        m(xg).sum().backward()
        m.zero_grad(set_to_none=True)

    result = {"device": device, "shape": shape, "type": attention_type, "impl": impl}
    for mode, step in (("fwd", forward), ("fb", forward_backward)):
        for _ in range(warmup):
            step()
        sync()
        # one step for the peak memory
        if device == "cuda":
            peak = cuda_peak_bytes(step, torch.device("cuda"))
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = status_kib("VmRSS")
            step()
            peak = (status_kib("VmHWM") - base) * 1024
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        result[f"{mode}_ms"] = statistics.median(times) * 1e3
        result[f"{mode}_mb"] = peak / 2**20
    # What 'auto' ran, after the warm-up (off the CPU it may have dropped a path that failed there).
    with torch.no_grad():
        chosen_fwd = paths.choose(impl, attention_type, -1, m.decompose(x))
    chosen_fb = paths.choose(impl, attention_type, -1, m.decompose(x.detach().requires_grad_()))
    result["chosen"] = chosen_fwd if chosen_fwd == chosen_fb else f"{chosen_fwd}/{chosen_fb}"
    result["fallbacks"] = paths.guard.fallbacks()
    return result


def _cpu_subprocess(case: dict, env: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_case", json.dumps(case)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cpu_case(args, shape, attention_type, impl, memory: bool = True) -> dict:
    """Times from one fresh subprocess, peak memory (when ``memory``) from another.

    The memory reading needs glibc's small mmap threshold, which turns every allocation above 64 KiB into a
    fresh mapping with its page faults; that slows paths that allocate per block far more than the
    materialising yardstick, so the times come from a process with the default allocator."""
    case = dict(device="cpu", shape=shape, attention_type=attention_type, impl=impl, warmup=args.warmup,
                repeats=args.repeats, threads=args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    result = _cpu_subprocess(case, env)
    if memory:
        mem = _cpu_subprocess(dict(case, warmup=1, repeats=1), dict(env, MALLOC_MMAP_THRESHOLD_="65536"))
        result.update(fwd_mb=mem["fwd_mb"], fb_mb=mem["fb_mb"])
    return result


def combine(rounds: list[list[dict]]) -> list[dict]:
    """One row per case from several rounds over all cases: the median time over rounds, and speed-ups as the
    median over rounds of the ratio to the yardstick *of the same round* (slow drifts of a shared machine then
    hit both sides of a ratio alike)."""
    rows = []
    for i, first in enumerate(rounds[0]):
        row = dict(first)
        for mode in ("fwd", "fb"):
            row[f"{mode}_ms"] = statistics.median(r[i][f"{mode}_ms"] for r in rounds)
            ratios = []
            for r in rounds:
                yard = next((c for c in r if c["impl"] == "materialize" and c["shape"] == first["shape"]
                             and c["type"] == first["type"]), None)
                if yard is not None:
                    ratios.append(yard[f"{mode}_ms"] / r[i][f"{mode}_ms"])
            row[f"{mode}_speedup"] = statistics.median(ratios) if ratios else None
        rows.append(row)
    return rows


def markdown(results: list[dict], title: str) -> str:
    lines = [f"### {title}", "",
             "| shape | type | path | fwd ms | fwd MB | f+b ms | f+b MB | fwd speed-up | f+b speed-up | f+b memory |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    yard = {(r["shape"], r["type"]): r for r in results if r["impl"] == "materialize"}
    for r in results:
        y = yard.get((r["shape"], r["type"]))
        path = r["impl"] if r["impl"] != "auto" else f"auto ({r['chosen']})"

        def ratio(a, b, fmt="{:.2f}x"):
            return fmt.format(a / b) if y and b > 0 else "-"

        def speedup(mode):
            return "-" if r.get(f"{mode}_speedup") is None else f"{r[f'{mode}_speedup']:.2f}x"

        lines.append(
            f"| {r['shape']} | {r['type']} | {path} | {r['fwd_ms']:.1f} | {r['fwd_mb']:.0f} | {r['fb_ms']:.1f} | "
            f"{r['fb_mb']:.0f} | {speedup('fwd')} | {speedup('fb')} | "
            f"{ratio(r['fb_mb'], y['fb_mb'] if y else 0, '{:.2f}')} |")
    lines.append("")
    lines.append("Speed-ups: materialize time / path time (the median over rounds of the ratio within a round). "
                 "f+b memory: path peak / materialize peak.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="'all': CPU, plus CUDA when available")
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    parser.add_argument("--types", nargs="+", default=list(TYPES))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(DEFAULT_SHAPES))
    parser.add_argument("--impls", nargs="+", default=None, help="paths to run (default: all applicable + auto)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every case this many times, in turn (memory is read once)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 warm-up, 2 timed repeats")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--jsonl", help="append each case's result to this file as soon as it is measured")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._case:
        print(json.dumps(measure_case(**json.loads(args._case))))
        return 0
    if args.quick:
        args.warmup, args.repeats = 1, 2
    for t in args.types:
        if len(t) != 4 or set(t) - {"0", "1"} or t == "0000":
            parser.error(f"--types: bad attention type {t!r}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")

    import torch

    _import_genattn()
    from genattn.attention.paths import applicable
    from genattn.app.bench import device_name

    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available")
        devices.append("cuda")
    all_results = []
    for device in devices:
        cases = []
        for shape in args.shapes:
            for attention_type in args.types:
                # flex runs on a CPU for tests only (compiled per shape, no fused backward): not by default
                impls = args.impls or ["materialize"] + [
                    p for p in applicable(attention_type, -1, device)
                    if p != "materialize" and (p != "flex" or device != "cpu")] + ["auto"]
                cases += [(shape, attention_type, impl) for impl in impls
                          if impl in applicable(attention_type, -1, device) + ["auto"]]
        rounds = []
        for k in range(args.rounds):
            results = []
            for shape, attention_type, impl in cases:
                if device == "cpu":
                    r = run_cpu_case(args, shape, attention_type, impl, memory=k == 0)
                    if k:
                        r.update(fwd_mb=rounds[0][len(results)]["fwd_mb"], fb_mb=rounds[0][len(results)]["fb_mb"])
                else:
                    r = measure_case(device, shape, attention_type, impl, args.warmup, args.repeats, args.threads)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(dict(r, round=k + 1)) + "\n")
                print(f"# round {k + 1}/{args.rounds} {device} {shape} {attention_type} {impl}: fwd "
                      f"{r['fwd_ms']:.1f} ms {r['fwd_mb']:.0f} MB, f+b {r['fb_ms']:.1f} ms {r['fb_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
                results.append(r)
            rounds.append(results)
        results = combine(rounds)
        torch.set_num_threads(args.threads)  # device_name reports this process's thread count
        title = (f"{device_name(torch.device(device))}; torch {torch.__version__}; batch {BATCH}, "
                 f"{HEADS} heads, kv_stride {KV_STRIDE}, float32; median of {args.repeats}"
                 + (f", {args.rounds} rounds" if args.rounds > 1 else ""))
        print(markdown(results, title))
        print()
        all_results += results
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(all_results, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
