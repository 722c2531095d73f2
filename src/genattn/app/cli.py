"""The ``genattn`` command line: thin subcommands over library functions.

The parser and the exit statuses are in :mod:`genattn.app.parser`. Every subcommand calls functions that are usable
from Python on their own (:mod:`genattn.engine`, :mod:`genattn.models.weights`, :mod:`genattn.app.bench`,
:mod:`genattn.app.pictures`, :mod:`genattn.app.study`, :mod:`genattn.app.demo`). Heavy imports happen inside the
subcommands so that ``--help`` is instant.

Model settings reach the library as one nested change mapping (``--set`` assignments, ``--backbone`` JSON and
``--image-size`` merged key by key), applied to the model's configuration with
:meth:`genattn.models.ModelConfig.updated` (or a recipe's :meth:`~genattn.engine.recipes.Recipe.replace`);
``--impl`` sets the attention path of every attention block.

Exit status:
    0  success.
    2  a usage error (unknown subcommand or option, a bad value) or a user error: a missing or unreadable
       input file, an unknown model name, a point outside the image, a malformed annotation file, an optional
       package that the command needs and is not installed. One line on stderr, no traceback.
    1  a runtime failure that is not the user's input (e.g. a non-finite loss, out of memory). One line on
       stderr; ``genattn --debug ...`` shows the traceback.
    75 (``EX_TEMPFAIL``) ``train`` stopped by SIGTERM after writing a checkpoint: run the same command with
       ``--auto-resume`` to continue (a requeue wrapper checks for this status).
    130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from genattn.app.parser import EXIT_OK, EXIT_PREEMPTED, EXIT_RUNTIME, EXIT_USAGE, build_parser

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """A problem with the user's input; reported in one line with exit status 2."""


def _image_size(values: Sequence[int] | None) -> tuple[int, int] | None:
    if not values:
        return None
    if len(values) > 2:
        raise UserError(f"--image-size takes MIN [MAX], got {len(values)} values")
    return (values[0], values[-1])


def _rank() -> int:
    """This process's rank under torchrun (0 without it); only rank 0 prints results."""
    return int(os.environ.get("RANK", "0"))


def _changes(args) -> dict:
    """``--set`` assignments, then ``--backbone`` keys and ``--image-size``, as one nested change mapping."""
    from genattn.settings import merge, parse_assignments

    changes = merge(parse_assignments(args.set), {"backbone": args.backbone} if args.backbone else {})
    size = _image_size(getattr(args, "image_size", None))
    if size:
        changes.update(min_size=size[0], max_size=size[1])
    return changes


def _recipe_changes(args) -> dict:
    """:func:`_changes` plus the recipe fields that have flags of their own."""
    flags = {"epochs": "epochs", "max_iters": "max_iters", "batch_size": "imgs_per_gpu", "workers": "workers",
             "amp": "amp", "seed": "seed", "device": "device"}
    return {**_changes(args),
            **{field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag, None) is not None}}


def _device(args) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _cmd_train(args) -> int:
    from genattn.data import data_root
    from genattn.engine.preemption import Preempted
    from genattn.engine.recipes import get_recipe, tiny_recipe
    from genattn.engine.train import train

    recipe = (tiny_recipe if args.tiny else get_recipe)(args.model).replace(**_recipe_changes(args))
    try:
        result = train(recipe.with_impl(args.impl), data_root=data_root(args.data), train_ann=args.ann,
                       val_ann=args.val_ann, work_dir=args.work_dir, resume=args.resume,
                       auto_resume=args.auto_resume)
    except Preempted as e:
        if _rank() == 0:
            print(f"genattn train: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    metrics = result.get("metrics") or {}
    summary = {"work_dir": str(result["work_dir"]), "checkpoint": str(result["checkpoint"]),
               "epoch": result["epoch"], "iter": result["iter"],
               **{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}
    if _rank() == 0:
        print(json.dumps(summary))
    return EXIT_OK


def _cmd_test(args) -> int:
    from genattn.data import data_root
    from genattn.engine.test import test

    metrics = test(args.checkpoint, model=args.model, impl=args.impl, data_root=data_root(args.data),
                   ann_file=args.ann, out_file=args.out, workers=args.workers, device=args.device,
                   amp=args.amp or "none", compile=args.compile)
    if _rank() == 0:
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}))
    return EXIT_OK


def _cmd_bench(args) -> int:
    from genattn.app import bench

    result = bench.benchmark(args.model, checkpoint=args.checkpoint, changes=_changes(args), impl=args.impl,
                             device=args.device, num_images=args.images, warmup=args.warmup,
                             input_size=tuple(args.input_size), memory_steps=args.memory_steps,
                             batch_size=args.batch_size, threads=args.threads, amp=args.amp or "none",
                             compile=args.compile)
    print(bench.format_result(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return EXIT_OK


def _load(args):
    from genattn.models import load_model

    model, _ = load_model(args.model, args.checkpoint, changes=_changes(args), impl=args.impl, device=_device(args))
    return model


def _cmd_detect(args) -> int:
    import torch

    from genattn.app.detect import detect_images, image_files

    files = image_files(args.images)  # an input that names nothing fails before the model is built
    model = _load(args)
    if args.compile:
        model = torch.compile(model)
    result = detect_images(model, files, Path(args.out), score_thr=args.score_thr,
                           ignore_orientation=args.ignore_orientation, batch_size=args.batch_size,
                           amp=args.amp or "none", strict=args.strict, pictures=not args.no_pictures)
    done = len(result["images"])
    skipped = f", {len(result['skipped'])} unreadable image(s) skipped" if result["skipped"] else ""
    pngs = f" and {done} PNG(s)" if not args.no_pictures else ""
    print(f"{sum(len(r['detections']) for r in result['images'])} detections in {done} image(s){skipped}; "
          f"wrote {result['json']}{pngs} in {args.out}")
    return EXIT_OK


def _cmd_attention(args) -> int:
    from genattn.app import pictures

    model = _load(args)
    files = pictures.attention_pictures(model, Path(args.image), tuple(args.point), Path(args.out),
                                        ignore_orientation=args.ignore_orientation)
    print(f"wrote {len(files)} PNG(s) in {args.out}: " + ", ".join(p.name for p in files))
    return EXIT_OK


def _cmd_export(args) -> int:
    from genattn.app.export import FORMATS, export_files

    formats = FORMATS if args.format == "both" else (args.format,)
    written = export_files(args.model, args.checkpoint, args.out, formats=formats, changes=_changes(args),
                           impl=args.impl)
    print("wrote " + " and ".join(str(p) for p in written.values()))
    return EXIT_OK


def _cmd_convert(args) -> int:
    from genattn.models.weights import convert_file

    out, config = convert_file(args.src, args.dst, model=args.model, changes=_changes(args))
    print(f"wrote {out} ({config.name})")
    return EXIT_OK


def _cmd_study(args) -> int:
    from genattn.app import study

    result = study.run_study(args.models, data=args.data, work_dir=args.work_dir, changes=_recipe_changes(args),
                             impl=args.impl, tiny=args.tiny,
                             device=None if args.device in (None, "auto") else args.device,
                             bench_images=args.bench_images, memory_steps=args.memory_steps)
    print(result["markdown"])
    print(f"run directory: {result['work_dir']}")
    return EXIT_OK


def _cmd_demo(args) -> int:
    from genattn.app import demo

    demo.run_demo(work_dir=args.work_dir, dcn=args.dcn, iters=args.iters, quick=args.quick, threads=args.threads)
    return EXIT_OK


_COMMANDS = {"train": _cmd_train, "test": _cmd_test, "bench": _cmd_bench, "detect": _cmd_detect,
             "attention": _cmd_attention, "export": _cmd_export, "convert": _cmd_convert, "study": _cmd_study,
             "demo": _cmd_demo}


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``genattn`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    prog = f"genattn {args.command}"
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ImportError) as e:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError, FloatingPointError, MemoryError) as e:
        if args.debug:
            raise
        print(f"{prog}: failed: {type(e).__name__}: {_one_line(e)} (rerun with 'genattn --debug' for the "
              "traceback)", file=sys.stderr)
        return EXIT_RUNTIME
