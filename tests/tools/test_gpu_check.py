"""tools/gpu_check.py: its CPU dry run (every section, toy sizes), the targets it reports, its time limits."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_dry_run_runs_every_section(tmp_path):
    out = tmp_path / "report"
    env = dict(os.environ, GENATTN_CACHE=str(tmp_path / "cache"))  # the built-in data set, generated here
    proc = subprocess.run([sys.executable, "tools/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert {k: v["status"] for k, v in results["status"].items()} == {
        "tests": "ok", "attention": "ok", "detector": "ok", "amp": "ok", "ddp": "ok"}
    assert results["tests"]["tests"] >= 10 and results["tests"]["skipped"] == results["tests"]["tests"]  # no GPU
    assert [(r["type"], r["impl"], r["chosen"]) for r in results["attention"]] == [("1111", "auto", "sdpa")]
    assert [r["name"] for r in results["detector"]] == list(_tool().MODELS)
    assert all(r["fps"] > 0 and r["mem_gb"] > 0 for r in results["detector"])
    amp, = results["amp"]
    assert amp["amp"] == "bf16" and amp["iters"] == 2 and amp["nonfinite_skipped"] == 0
    assert results["ddp"][0]["iter"] == 1
    report = (out / "report.md").read_text()
    for title in ("## Attention module", "## Detectors", "## Mixed-precision", "## DDP", "## Targets"):
        assert title in report
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "report.md", "results.json"]


def test_targets_are_ratios_of_auto_rows():
    tool = _tool()
    attention = [dict(shape="stage3", type="1111", impl="auto", fb_ms=30.0, fb_mb=120.0),
                 dict(shape="stage3", type="0010", impl="auto", fb_ms=20.0, fb_mb=100.0),
                 dict(shape="stage3", type="1111", impl="materialize", fb_ms=90.0, fb_mb=900.0)]
    detector = [dict(name=n, median_ms=ms, mem_gb=gb) for n, ms, gb in zip(tool.MODELS, (50, 60, 70), (3, 4, 5))]
    got = tool._targets({"attention": attention, "detector": detector})
    assert {k: (round(v["value"], 3), v["met"]) for k, v in got.items()} == {
        "1111 f+b time / 0010's, stage 3": (1.5, True), "1111 f+b peak memory / 0010's, stage 3": (1.2, True),
        "1111 detector inference time / baseline's": (1.4, False),
        "1111 detector training memory / 0010's": (1.25, False)}
    assert all(v["value"] is None for v in tool._targets({}).values())


def test_a_section_out_of_time_is_stopped_and_reported(tmp_path):
    tool = _tool()
    start = time.perf_counter()
    pid_file = tmp_path / "pid"
    grandchild = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with open(tmp_path / "log", "w") as log:
        # a child that starts a grandchild (as torchrun starts its workers): the whole process group goes
        cmd = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
               f"{grandchild!r}]); time.sleep(60)"]
        status = tool._run_section("slow", cmd, 5, log)
    assert status["status"] == "timed out after 5 s" and time.perf_counter() - start < 30
    time.sleep(0.5)
    state = Path(f"/proc/{pid_file.read_text()}/status")
    assert not state.exists() or "\nState:\tZ" in state.read_text()  # gone, or a zombie left to its reaper


def test_ddp_needs_two_gpus():
    tool = _tool()
    args = argparse.Namespace(device="cuda", quick=False)
    assert tool._section_command("ddp", args, Path("/tmp"), {"gpus": 1}) == "needs two GPUs, this machine has 1"
    assert "--nproc_per_node" in tool._section_command("ddp", args, Path("/tmp"), {"gpus": 2})
