"""The ``genattn`` argument parser: its subcommands, their options and help texts, and the exit statuses.

:mod:`genattn.app.cli` runs what this parses.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["build_parser", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "EXIT_PREEMPTED"]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (argparse prints the whole usage block by default)."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"base_width\": 16}}', got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


_IMPLS = ("auto", "materialize", "chunked", "sdpa", "flex", "key_only", "separable")  # attention.paths.IMPLS
_MODEL_HELP = ("model name, e.g. faster_rcnn_r50_fpn_attention_1111_1x_coco (faster_rcnn_r50_fpn_attention_XXXX"
               "[_dcn]_1x_coco for any of the 15 attention types, faster_rcnn_r50_fpn_1x_coco, "
               "faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco)")


def _add_impl(p: argparse.ArgumentParser) -> None:
    p.add_argument("--impl", choices=_IMPLS, help="the attention path of every attention block (default auto: "
                   "the fastest exact path for the device and map size, or the path named by the environment "
                   "variable GENATTN_ATTENTION_IMPL); no effect without attention")


def _add_amp(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help=what)


def _add_compile(p: argparse.ArgumentParser) -> None:
    """--compile, for the subcommands that run a model's inference (test, bench, detect)."""
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile: the first image compiles (minutes for a ResNet-50 on "
                        "a CPU), the second image size recompiles with dynamic sizes, later sizes reuse it")


def _add_model_settings(p: argparse.ArgumentParser, set_help: str) -> None:
    """--backbone, --image-size, --set and --impl: changes to the model's settings, merged key by key."""
    p.add_argument("--backbone", type=_json_dict, metavar="JSON",
                   help="backbone settings as JSON, merged key by key, e.g. '{\"layers\": [1,1,1,1], "
                        "\"base_width\": 16}' or '{\"attention_cfg\": {\"num_heads\": 4}}'")
    p.add_argument("--image-size", type=_positive_int, nargs="+", metavar=("MIN", "MAX"),
                   help="resize images so the short side is MIN and the long side at most MAX "
                        "(default 800 1333; one value sets both)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help=set_help)
    _add_impl(p)


def _add_model_options(p: argparse.ArgumentParser, *, checkpoint: bool = True) -> None:
    """Options shared by the subcommands that run a model (bench, detect, attention)."""
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    if checkpoint:
        p.add_argument("--checkpoint", metavar="FILE",
                       help="weights: a checkpoint of 'genattn train' or 'genattn convert', an MMDetection "
                            "checkpoint, or a URL of a released model (it must hold MODEL)")
    _add_model_settings(p, "model settings, e.g. --set heads.fpn_channels=64 backbone.attention_cfg.impl=chunked")
    if checkpoint:
        p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")


def _add_recipe_options(p: argparse.ArgumentParser) -> None:
    """Recipe options shared by train and study (see genattn.engine.recipes.Recipe for every field)."""
    p.add_argument("--data", required=True, metavar="ROOT",
                   help="COCO-layout data root (ROOT/train2017/, ROOT/val2017/, ROOT/annotations/instances_*.json), "
                        "or 'shapes' for the built-in dataset")
    p.add_argument("--work-dir", metavar="DIR", help="run directory (default work_dirs/MODEL)")
    p.add_argument("--tiny", action="store_true",
                   help="start from the CPU-sized recipe (tiny ResNet from scratch, 128-224 px images)")
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the recipe's, 12)")
    p.add_argument("--max-iters", type=_positive_int, help="stop after this many iterations (short runs)")
    p.add_argument("--batch-size", type=_positive_int, help="images per process and step (default 2); the "
                   "learning rate scales linearly with the total batch")
    p.add_argument("--workers", type=int, help="data-loading processes per training process (default 2)")
    _add_amp(p, "mixed precision (default none = fp32)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    _add_model_settings(p, "any recipe setting, merged key by key, e.g. --set base_lr=0.01 lr_steps=[4,6] "
                           "heads.fpn_channels=64 backbone.attention_cfg.impl=chunked")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``genattn`` (one subparser per subcommand)."""
    parser = _Parser(prog="genattn", description="Spatial attention (Zhu et al. 2019) for Faster R-CNN in "
                     "PyTorch: train, test, benchmark and visualise the seed's models; 'genattn demo' runs the "
                     "whole study on a built-in dataset on a CPU.",
                     epilog="Exit status: 0 ok, 2 usage or input error, 1 runtime failure, 75 train stopped by "
                            "SIGTERM after a checkpoint (resume with --auto-resume), 130 interrupted.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary)

    p = add("train", "train a model on COCO-format data (one process, or many under torchrun)")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    _add_recipe_options(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: CUDA if available")
    p.add_argument("--ann", metavar="FILE", help="training annotation file (default ROOT/annotations/"
                   "instances_train2017.json)")
    p.add_argument("--val-ann", metavar="FILE", help="validation annotation file")
    p.add_argument("--resume", metavar="FILE", help="continue a run from this checkpoint")
    p.add_argument("--auto-resume", action="store_true", help="continue from the latest checkpoint in --work-dir "
                   "(mid-epoch or epoch); SIGTERM writes one and exits with status 75")

    p = add("test", "evaluate a checkpoint: COCO box AP (one process, or many under torchrun)")
    p.add_argument("model", metavar="MODEL", help="model name (the checkpoint must hold it)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint of 'genattn train' or 'genattn convert', an MMDetection checkpoint or a URL")
    _add_impl(p)
    p.add_argument("--data", required=True, metavar="ROOT", help="COCO-layout data root, or 'shapes'")
    p.add_argument("--ann", metavar="FILE", help="annotation file (default ROOT/annotations/instances_val2017.json)")
    p.add_argument("--out", metavar="FILE", help="COCO results JSON to write (default next to the checkpoint)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    _add_amp(p, "run the model under autocast in bfloat16 or float16 (default none = fp32)")
    _add_compile(p)

    p = add("bench", "inference speed (batch 1, median, fps) and peak training memory (GB)")
    _add_model_options(p)
    p.add_argument("--images", type=_positive_int, default=20, metavar="N", help="timed images (default 20)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed warm-up images (default 3)")
    p.add_argument("--input-size", type=_positive_int, nargs=2, default=(480, 640), metavar=("H", "W"),
                   help="size of the random test images before the model's resize (default 480 640, a COCO image)")
    p.add_argument("--memory-steps", type=int, default=3, metavar="N",
                   help="training steps for the memory peak; 0 skips it (default 3)")
    p.add_argument("--batch-size", type=_positive_int, default=2, help="training batch for the memory peak")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    _add_amp(p, "time and measure under autocast in bfloat16 or float16 (default none = fp32)")
    _add_compile(p)

    p = add("detect", "detect objects: a COCO-style JSON and a PNG per image")
    _add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (the images directly inside) "
                   "or quoted glob patterns ('photos/*.jpg', 'data/**/*.png')")
    p.add_argument("--out", default="detections", metavar="DIR", help="output directory (default ./detections)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="images per model call (default 1)")
    p.add_argument("--strict", action="store_true", help="stop at an unreadable image (default: report it on "
                   "stderr and skip it)")
    p.add_argument("--no-pictures", action="store_true", help="write only detections.json, no PNGs")
    _add_amp(p, "run the model under autocast in bfloat16 or float16 (default none = fp32)")
    _add_compile(p)
    p.add_argument("--score-thr", type=float, default=0.3, help="draw detections above this score (default 0.3)")
    p.add_argument("--ignore-orientation", action="store_true",
                   help="use the stored pixels as they are (default: turn photos upright by their EXIF orientation)")

    p = add("attention", "PNG heatmaps of where one pixel attends, per block, head and term")
    _add_model_options(p)
    p.add_argument("image", metavar="IMAGE", help="image file")
    p.add_argument("--point", type=int, nargs=2, required=True, metavar=("X", "Y"),
                   help="query pixel in image coordinates (x from the left, y from the top)")
    p.add_argument("--out", default="attention", metavar="DIR", help="output directory (default ./attention)")
    p.add_argument("--ignore-orientation", action="store_true",
                   help="use the stored pixels as they are (default: turn photos upright by their EXIF orientation)")

    p = add("export", "the whole detector (resize to NMS) as ONNX (OUT.onnx) and torch.export (OUT.pt2) graphs "
                      "for one uint8 image of any size")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint of 'genattn train' or 'genattn convert', an MMDetection checkpoint or a URL")
    p.add_argument("--out", required=True, metavar="OUT", help="output path without suffix: writes OUT.onnx and "
                   "OUT.pt2")
    p.add_argument("--format", choices=("both", "onnx", "pt2"), default="both", help="what to write (default both)")
    _add_model_settings(p, "model settings, e.g. --set heads.box_score_thresh=0.3")

    p = add("convert", "convert an MMDetection checkpoint to genattn's format")
    p.add_argument("src", metavar="IN", help="MMDetection checkpoint (.pth), any file name")
    p.add_argument("dst", metavar="OUT", help="output file (a genattn checkpoint for --checkpoint)")
    p.add_argument("--model", help="model name, needed only when IN holds no config and its file name names no "
                   "model (MMDetection's files carry their config; released file names name the model)")
    p.add_argument("--backbone", type=_json_dict, metavar="JSON",
                   help="backbone settings as JSON, merged key by key (models without a config inside)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="other model settings")

    p = add("study", "train, test and bench several models; the seed's table as Markdown/CSV and a plot")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model names")
    _add_recipe_options(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto: CUDA if available")
    p.add_argument("--bench-images", type=_positive_int, default=20, help="timed images per model (default 20)")
    p.add_argument("--memory-steps", type=int, default=3, metavar="N",
                   help="training steps of each memory measurement; 0 skips it (default 3)")

    p = add("demo", "the study on the built-in dataset, on a CPU in about 15 minutes (the main job)")
    p.add_argument("--work-dir", metavar="DIR", help="run directory (default runs/demo-TIMESTAMP)")
    p.add_argument("--dcn", action="store_true", help="also study the deformable-conv variants (slower)")
    p.add_argument("--iters", type=_positive_int,
                   help="training iterations per model (default: after the full-size cost measurement, sized by "
                        "timing a few steps so that the whole demo takes about 14 minutes, between 200 and 1000)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: tiny data and models, 2 iterations, the cost of tiny 64 px models")
    return parser
