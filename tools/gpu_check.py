"""One prepared check of genattn on a GPU: CUDA tests, benchmarks, mixed precision, DDP, in one Markdown report.

    python tools/gpu_check.py                         # on a GPU machine: every section, within 8 minutes on one GPU
    python tools/gpu_check.py --device cpu --quick    # the same sections on a CPU at toy sizes (a test runs it)
    python tools/gpu_check.py --sections attention detector --out DIR

Sections, one after another, each in its own process group with a time limit (a section that fails or runs out
of time is reported as such, with what it measured so far, and the next one runs):

* ``tests``: the CUDA tests (``-k cuda`` in the files that hold them).
* ``attention``: ``benchmarks/attention.py`` on the device: stages 3 and 4, '1111', '0010', '1000', '0100',
  '0001', every applicable path, 'auto' and the materialising yardstick; time and peak memory, forward and
  forward+backward.
* ``detector``: :func:`genattn.app.bench.benchmark` of the baseline, '0010' and '1111' (batch-1 fps on
  800x1067 inputs, training memory).
* ``amp``: '1111' trained from scratch at the seed's image size (800 px) on the built-in shapes data, with fp16
  (gradient scaler) and with bf16: losses, time per iteration, memory.
* ``ddp``: two processes of ``genattn train`` under torchrun, one GPU each, when there are two GPUs (gloo on a
  CPU with ``--device cpu``).

It writes ``OUT/report.md`` (device, versions, tables, the GPU targets, failures), ``OUT/results.json`` and
``OUT/gpu_check.log`` (every section's output), and prints the summary. genattn is imported from this checkout
(``src/``) with the machine's own PyTorch; runs and checkpoints go to a temporary folder. genattn needs
pycocotools (the ``amp`` and ``ddp`` sections read data), which the workplace's GPU image lacks: the README
says which wheel to carry.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS = ("tests", "attention", "detector", "amp", "ddp")
# Seconds per section on a GPU (470 in all: the 8 minutes, less the report); a CPU dry run gets more.
LIMITS = {"tests": 100, "attention": 150, "detector": 90, "amp": 80, "ddp": 50}
CPU_LIMIT = 400
TEST_FILES = ("tests/attention/test_attention_kernels.py", "tests/attention/test_cuda_paths.py",
              "tests/models/test_resize.py", "tests/models/test_resnet.py")
NEEDED = ("torch", "torchvision", "numpy", "PIL", "pycocotools", "tqdm", "matplotlib", "pytest", "cv2")
# The GPU targets of the issue that set them: (measured quantity, limit).
TARGETS = {"1111 f+b time / 0010's, stage 3": 1.5, "1111 f+b peak memory / 0010's, stage 3": 1.2,
           "1111 detector inference time / baseline's": 1.3, "1111 detector training memory / 0010's": 1.2}
MODELS = ("faster_rcnn_r50_fpn_1x_coco", "faster_rcnn_r50_fpn_attention_0010_1x_coco",
          "faster_rcnn_r50_fpn_attention_1111_1x_coco")


def _env() -> dict:
    """Device, versions and missing packages (in this process)."""
    import importlib.util

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "missing": [m for m in NEEDED if importlib.util.find_spec(m) is None]}
    for name in ("torchvision", "triton"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    if info["gpus"]:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        smi = shutil.which("nvidia-smi")
        if smi:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True)
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None
    else:
        from genattn.app.bench import device_name

        info["device"] = device_name(torch.device("cpu"))
    return info


def _worker_detector(args, tmp: Path) -> None:
    import torch

    from genattn.app.bench import benchmark
    from genattn.attention.paths import guard
    from genattn.engine.recipes import tiny_recipe

    for name in MODELS:
        if args.quick:
            tiny = tiny_recipe(name, min_size=64, max_size=96).model_config()
            r = benchmark(tiny, device=args.device, num_images=2, warmup=0, input_size=(64, 96), memory_steps=1,
                          batch_size=1, threads=1)
        else:
            r = benchmark(name, device=args.device, num_images=20, warmup=3, memory_steps=2, batch_size=2)
        with open(tmp / "detector.jsonl", "a") as f:
            f.write(json.dumps(dict(r.to_dict(), name=name, fallbacks=guard.fallbacks())) + "\n")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _worker_amp(args, tmp: Path) -> None:
    from genattn.attention.paths import guard
    from genattn.data import data_root
    from genattn.engine.recipes import get_recipe, tiny_recipe
    from genattn.engine.train import train

    name = MODELS[2]
    root = data_root("shapes")
    # fp16 on a CPU runs at a small fraction of bf16's speed (tens of seconds per tiny step): the dry run
    # takes bf16 only (tests/engine covers fp16 with its gradient scaler on a toy model).
    for amp in ("bf16",) if args.quick else ("fp16", "bf16"):
        common = dict(pretrained_backbone=None, amp=amp, eval_interval=-1, device=args.device, seed=0)
        if args.quick:
            recipe = tiny_recipe(name, min_size=64, max_size=96).replace(max_iters=2, log_interval=1,
                                                                         imgs_per_gpu=1, **common)
        else:
            recipe = get_recipe(name).replace(max_iters=20, log_interval=5, workers=2, **common)
        start = time.perf_counter()
        out = train(recipe, data_root=root, work_dir=tmp / f"amp-{amp}", progress=False)
        lines = [json.loads(x) for x in (tmp / f"amp-{amp}" / "log.json").read_text().splitlines()]
        lines = [x for x in lines if x.get("mode") == "train"]
        row = {"amp": amp, "iters": out["iter"], "image_size": [recipe.min_size, recipe.max_size],
               "batch": recipe.imgs_per_gpu, "wall_s": time.perf_counter() - start,
               "loss_first": lines[0]["loss"], "loss_last": lines[-1]["loss"],
               "s_per_iter_last": lines[-1]["time"], "memory_mb": max(x["memory"] for x in lines),
               "nonfinite_skipped": out["nonfinite_skipped"], "fallbacks": guard.fallbacks()}
        with open(tmp / "amp.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def _section_command(name: str, args, tmp: Path, env_info: dict) -> list[str] | str:
    """The command of a section, or the reason it is skipped."""
    py = sys.executable
    if name == "tests":
        return [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *TEST_FILES, "-k", "cuda",
                f"--junitxml={tmp / 'tests.xml'}"]
    if name == "attention":
        cmd = [py, "benchmarks/attention.py", "--device", args.device, "--jsonl", str(tmp / "attention.jsonl")]
        if args.quick:
            return cmd + ["--quick", "--shapes", "tiny", "--types", "1111", "--impls", "auto", "--threads", "1"]
        return cmd + ["--warmup", "2", "--repeats", "10"]
    if name in ("detector", "amp"):
        return [py, str(Path(__file__).resolve()), "--_worker", name, "--_tmp", str(tmp), "--device", args.device,
                *(["--quick"] if args.quick else [])]
    if name == "ddp":
        if args.device == "cuda" and env_info["gpus"] < 2:
            return f"needs two GPUs, this machine has {env_info['gpus']}"
        cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "genattn",
               "train", MODELS[2], "--data", "shapes", "--device", args.device, "--work-dir", str(tmp / "ddp"),
               "--set", "pretrained_backbone=null", "eval_interval=-1", "--workers", "1"]
        if args.quick:
            return cmd + ["--tiny", "--max-iters", "1", "--batch-size", "1", "--image-size", "64", "96"]
        return cmd + ["--max-iters", "4"]
    raise ValueError(name)


def _run_section(name: str, cmd: list[str], limit: float, log) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    log.write(f"\n===== {name}: {' '.join(cmd)} (limit {limit:.0f} s)\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
        status = "ok" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: torchrun's workers, compile workers
        proc.wait()
        status = f"timed out after {limit:.0f} s"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1)}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _tests_result(tmp: Path) -> dict:
    path = tmp / "tests.xml"
    if not path.exists():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}: {(c[0].get('message') or '').splitlines()[0][:200]}"
              for c in suite.iter("testcase") if len(c) and c[0].tag in ("failure", "error")]
    return {**counts, "failed": failed}


def _ratio(a, b):
    return a / b if a is not None and b else None


def _targets(results: dict) -> dict:
    rows = {(r["shape"], r["type"], r["impl"]): r for r in results.get("attention", [])}
    det = {r["name"]: r for r in results.get("detector", [])}
    a1, a0 = rows.get(("stage3", "1111", "auto")), rows.get(("stage3", "0010", "auto"))
    base, d0, d1 = (det.get(n) for n in MODELS)
    values = {
        "1111 f+b time / 0010's, stage 3": _ratio(a1 and a1["fb_ms"], a0 and a0["fb_ms"]),
        "1111 f+b peak memory / 0010's, stage 3": _ratio(a1 and a1["fb_mb"], a0 and a0["fb_mb"]),
        "1111 detector inference time / baseline's": _ratio(d1 and d1["median_ms"], base and base["median_ms"]),
        "1111 detector training memory / 0010's": _ratio(d1 and d1["mem_gb"], d0 and d0["mem_gb"])}
    return {k: {"value": v, "limit": TARGETS[k], "met": None if v is None else v <= TARGETS[k]}
            for k, v in values.items()}


def _report(args, info: dict, status: dict, results: dict, total_s: float) -> str:
    from attention import markdown

    dev = info.get("device")
    lines = [f"# genattn GPU check ({'dry run on a CPU' if args.device == 'cpu' else dev})", "",
             f"{datetime.datetime.now():%Y-%m-%d %H:%M}; {dev}" + (
                 f" ({info['gpus']} GPU(s), compute capability {info.get('capability')}, {info.get('memory_gb')} GB, "
                 f"driver {info.get('driver')}, CUDA {info['cuda']}, cuDNN {info.get('cudnn')})" if info["gpus"] else "")
             + f"; Python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, triton "
             f"{info['triton']}; `{' '.join(sys.argv)}`; {total_s:.0f} s in all.", ""]
    if info["missing"]:
        lines += [f"Missing packages: {', '.join(info['missing'])}.", ""]
    lines += ["| section | status | seconds |", "|---|---|---:|"]
    lines += [f"| {k} | {v['status']} | {v.get('seconds', '')} |" for k, v in status.items()]
    t = results.get("tests")
    if t:
        lines += ["", "## CUDA tests", "", f"{t['tests']} tests: {t['failures']} failed, {t['errors']} errors, "
                  f"{t['skipped']} skipped."] + [f"- {f}" for f in t["failed"]]
    if results.get("attention"):
        rows = [r for r in results["attention"] if r.get("round", 1) == 1]
        lines += ["", "## Attention module (benchmarks/attention.py)", "",
                  markdown(rows, f"{dev}; batch 2, 8 heads, kv_stride 2, float32").replace("### ", "")]
    if results.get("detector"):
        tiny = " (their tiny CPU variants)" if args.quick else ""
        lines += ["", f"## Detectors{tiny} (genattn.app.bench)", "",
                  "| model | input -> model size | fps | median ms | train mem (GB) | memory method |",
                  "|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['name']} | {'x'.join(map(str, r['input_size']))} -> {'/'.join(map(str, r['image_size']))} | "
                  f"{r['fps']:.2f} | {r['median_ms']:.1f} | "
                  f"{r['mem_gb'] if r['mem_gb'] is None else round(r['mem_gb'], 3)} | {r['mem_method']} |"
                  for r in results["detector"]]
    if results.get("amp"):
        lines += ["", "## Mixed-precision training of '1111' (built-in shapes data, from scratch)", "",
                  "| amp | iterations | image size | batch | loss first -> last | s/iter | memory (MB) | skipped |",
                  "|---|---:|---|---:|---|---:|---:|---:|"]
        lines += [f"| {r['amp']} | {r['iters']} | {r['image_size']} | {r['batch']} | {r['loss_first']:.3f} -> "
                  f"{r['loss_last']:.3f} | {r['s_per_iter_last']:.3f} | {r['memory_mb']} | {r['nonfinite_skipped']} |"
                  for r in results["amp"]]
    if status.get("ddp", {}).get("status") == "ok" and results.get("ddp"):
        r = results["ddp"][0]
        lines += ["", "## DDP", "", f"Two processes under torchrun ({'NCCL' if args.device == 'cuda' else 'gloo'}): "
                  f"{r['iter']} iterations, loss {r['loss']:.3f}, memory {r['memory']} MB on rank 0."]
    lines += ["", "## Targets", "", "| quantity | measured | target | met |", "|---|---:|---:|---|"]
    for k, v in results["targets"].items():
        value = "-" if v["value"] is None else f"{v['value']:.2f}x"
        lines.append(f"| {k} | {value} | <= {v['limit']}x | {'-' if v['met'] is None else 'yes' if v['met'] else 'NO'} |")
    drops = {k: v for r in results.get("detector", []) + results.get("amp", []) for k, v in r["fallbacks"].items()}
    drops.update({k: v for r in results.get("attention", []) for k, v in r.get("fallbacks", {}).items()})
    lines += ["", "## Paths dropped by 'auto'", ""] + ([f"- {k}: {v}" for k, v in drops.items()] or ["None."])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (meant for --device cpu)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--out", type=Path, help="report folder (default gpu_check/TIMESTAMP)")
    p.add_argument("--_worker", choices=("detector", "amp"), help=argparse.SUPPRESS)
    p.add_argument("--_tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        {"detector": _worker_detector, "amp": _worker_amp}[args._worker](args, args._tmp)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available (use --device cpu --quick for a dry run)")
    out = args.out or ROOT / "gpu_check" / f"{datetime.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    info = _env()
    status, results = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name, open(out / "gpu_check.log", "w") as log:
        tmp = Path(tmp_name)
        for name in args.sections:
            cmd = _section_command(name, args, tmp, info)
            if isinstance(cmd, str):
                status[name] = {"status": f"skipped: {cmd}"}
            else:
                limit = CPU_LIMIT if args.device == "cpu" else LIMITS[name]
                status[name] = _run_section(name, cmd, limit, log)
            print(f"{name}: {status[name]['status']}", flush=True)
        results["tests"] = _tests_result(tmp)
        for name in ("attention", "detector", "amp"):
            results[name] = _read_jsonl(tmp / f"{name}.jsonl")
        ddp_log = tmp / "ddp" / "log.json"
        results["ddp"] = _read_jsonl(ddp_log)[-1:] if ddp_log.exists() else []
    results["targets"] = _targets(results)
    total = time.perf_counter() - start
    report = _report(args, info, status, results, total)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"env": info, "status": status, **results}, indent=1) + "\n")
    print(report)
    print(f"report: {out / 'report.md'}")
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
