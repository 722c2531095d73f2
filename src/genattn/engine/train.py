"""The training loop: one code path for one process and for ``torchrun`` (DDP), MMDetection's 1x schedule.

Per iteration: set the learning rate (warmup, steps), forward under optional autocast, check the loss is finite
on every rank, backward (through a GradScaler for fp16), SGD step. Per epoch: checkpoint, evaluate. Resuming
restores model, optimizer, scheduler, scaler, counters and every rank's RNG states, and the sampler skips the
batches already done, so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genattn.data import CocoDetection, GroupedBatchSampler, collate
from genattn.engine import distributed as du
from genattn.engine.build import build_model, check_categories, coco_paths, seed_everything
from genattn.engine.checkpoint import FORMAT, find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from genattn.engine.evaluate import autocast, evaluate, format_metrics, unwrap_loader_error
from genattn.engine.logger import VAL_KEYS, JsonLogger, memory_mb
from genattn.engine.runlog import run_logging
from genattn.engine.schedule import WarmupMultiStepLR
from genattn.recipes import Recipe

__all__ = ["train"]

logger = logging.getLogger(__name__)


def train(recipe: Recipe, *, data_root: str | os.PathLike | None = None,
          train_ann: str | os.PathLike | None = None, train_images: str | os.PathLike | None = None,
          val_ann: str | os.PathLike | None = None, val_images: str | os.PathLike | None = None,
          work_dir: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
          auto_resume: bool = False, model: torch.nn.Module | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train a detector with a recipe; works alone and under ``torchrun`` (one GPU or CPU per process).

    Data: ``data_root`` in COCO's layout (``ROOT/annotations/instances_{split}.json``, ``ROOT/{split}/``, splits
    from the recipe), or explicit files; explicit files win. Without a validation set (no root and no
    ``val_ann``) the run does not evaluate.

    Args:
        recipe: what to train and how.
        data_root, train_ann, train_images, val_ann, val_images: the data.
        work_dir: run directory (default ``work_dirs/<model>``): recipe.json, log.json, train.log,
            checkpoints ``epoch_N.pth`` (and ``iter_N.pth`` when ``max_iters`` stops mid-epoch),
            ``last_checkpoint``, detections ``epoch_N.bbox.json``.
        resume: checkpoint to continue from.
        auto_resume: continue from the run directory's latest checkpoint if there is one (``resume`` wins).
        model: use this detector instead of building ``recipe.model`` (it must follow genattn's detector call
            convention); the recipe still sets everything else.
        progress: show a progress bar (rank 0).

    Returns:
        ``{'work_dir', 'checkpoint' (last one written), 'epoch', 'iter', 'metrics' (last evaluation or {}),
        'bad_samples', 'nonfinite_skipped'}``.

    Raises:
        ValueError: bad input (data, annotations, too many unreadable images), naming the file and the reason.
        FloatingPointError: a non-finite loss with ``recipe.nonfinite_loss == 'raise'``, naming the iteration.
    """
    device, created_group = du.init_distributed(recipe.device)
    rank = du.get_rank()
    work_dir = Path(work_dir) if work_dir is not None else Path("work_dirs") / recipe.model
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
    du.barrier()
    try:
        with run_logging(work_dir / "train.log", rank):
            logger.info("run directory: %s", work_dir.resolve())
            return _run(recipe, device, work_dir, data_root, train_ann, train_images, val_ann, val_images,
                        resume, auto_resume, model, progress and rank == 0)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _datasets(recipe, data_root, train_ann, train_images, val_ann, val_images):
    img_dir, ann = coco_paths(data_root, recipe.train_split, ann_file=train_ann, img_dir=train_images)
    train_ds = CocoDetection(img_dir, ann, train=True, flip_prob=recipe.flip_prob, seed=recipe.seed,
                             bad_sample="skip")
    s = train_ds.stats
    logger.info("training set %s: %d images, %d kept (%d without usable boxes and %d smaller than 32 px "
                "dropped), %d crowd boxes ignored, %d boxes under 1 px or outside the image dropped, %d images "
                "read as stored (annotated without their EXIF orientation)", ann, s["images"], s["images_kept"],
                s["images_without_boxes_dropped"], s["small_images_dropped"], s["crowd_boxes_ignored"],
                s["small_boxes_dropped"], s["exif_orientation_ignored"])
    val_ds = None
    if recipe.eval_interval >= 0 and (data_root is not None or val_ann is not None):
        img_dir, ann = coco_paths(data_root, recipe.val_split, ann_file=val_ann, img_dir=val_images)
        val_ds = CocoDetection(img_dir, ann, train=False)
        if tuple(val_ds.category_ids) != tuple(train_ds.category_ids):
            raise ValueError(f"annotation file {ann}: categories differ from the training set's ({train_ds.ann_file})")
        logger.info("validation set %s: %d images, %d read as stored (annotated without their EXIF orientation)",
                    ann, len(val_ds), val_ds.stats["exif_orientation_ignored"])
    return train_ds, val_ds


def _run(recipe, device, work_dir, data_root, train_ann, train_images, val_ann, val_images, resume, auto_resume,
         model, progress):
    rank, world = du.get_rank(), du.get_world_size()
    train_ds, val_ds = _datasets(recipe, data_root, train_ann, train_images, val_ann, val_images)
    if resume is None and auto_resume:
        resume = find_latest(work_dir)
        if resume is None:
            logger.info("auto-resume: no checkpoint in %s, starting afresh", work_dir)
    seed_everything(recipe.seed)
    if model is None:
        # A resumed run takes every weight from its checkpoint: no ImageNet initialisation (or download) first.
        built = recipe.replace(pretrained_backbone=None) if resume is not None else recipe
        model = build_model(built, category_ids=train_ds.category_ids, class_names=train_ds.class_names)
    check_categories(model, train_ds)
    model.to(device)
    if rank == 0:
        recipe.save(work_dir / "recipe.json")

    sampler = GroupedBatchSampler(train_ds.aspect_ratio_groups(), recipe.imgs_per_gpu, seed=recipe.seed)
    iters_per_epoch = len(sampler)
    total_iters = recipe.epochs * iters_per_epoch
    if recipe.max_iters is not None:
        total_iters = min(total_iters, recipe.max_iters)
    lr = recipe.lr(sampler.global_batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, steps=recipe.lr_steps, gamma=recipe.lr_gamma,
                                  warmup_iters=recipe.warmup_iters, warmup_ratio=recipe.warmup_ratio,
                                  steps_unit=recipe.lr_steps_unit)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.amp == "fp16")
    logger.info("model %s on %s x %d, %d images per process (total batch %d), lr %.5g, %d iterations per epoch, "
                "%d iterations in all", recipe.model, device, world, recipe.imgs_per_gpu,
                sampler.global_batch_size, lr, iters_per_epoch, total_iters)

    state = {"epoch": 0, "iter": 0, "iter_in_epoch": 0, "bad_samples": 0, "nonfinite_skipped": 0,
             "checkpoint": None, "metrics": {}}
    if resume is not None:
        _resume(Path(resume), model, optimizer, scheduler, scaler, state, sampler.global_batch_size)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=recipe.find_unused_parameters)
    log = JsonLogger(work_dir, tensorboard=recipe.tensorboard, enabled=rank == 0)
    bar = tqdm(total=total_iters, initial=state["iter"], desc="train", dynamic_ncols=True,
               disable=not progress)
    meta = {"category_ids": list(train_ds.category_ids), "class_names": list(train_ds.class_names),
            "world_size": world, "iters_per_epoch": iters_per_epoch, "total_batch": sampler.global_batch_size}
    ctx = dict(recipe=recipe, device=device, work_dir=work_dir, model=model, net=net, params=params, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, log=log, bar=bar, val_ds=val_ds, meta=meta, state=state,
               iters_per_epoch=iters_per_epoch, total_iters=total_iters)
    # Route console log lines through tqdm so they do not break the bar (only loggers that print to a console).
    consoles = [lg for lg in (logging.getLogger("genattn"), logging.getLogger())
                if any(type(h) is logging.StreamHandler for h in lg.handlers)] if progress else []
    try:
        with logging_redirect_tqdm(loggers=consoles):
            while state["iter"] < total_iters:
                epoch = state["epoch"]
                train_ds.set_epoch(epoch)
                sampler.set_epoch(epoch, start_batch=state["iter_in_epoch"])
                loader = torch.utils.data.DataLoader(
                    train_ds, batch_sampler=sampler, collate_fn=collate, num_workers=recipe.workers,
                    pin_memory=device.type == "cuda",
                    generator=torch.Generator().manual_seed(recipe.seed * 1000 + epoch))
                _train_epoch(loader, ctx)
                finished = state["iter_in_epoch"] == iters_per_epoch
                if finished:
                    state["epoch"], state["iter_in_epoch"] = epoch + 1, 0
                last = state["iter"] >= total_iters
                tag = f"epoch_{state['epoch']}" if finished else f"iter_{state['iter']}"  # file names
                if last or (finished and state["epoch"] % recipe.checkpoint_interval == 0):
                    _save(work_dir / f"{tag}.pth", ctx)
                if val_ds is not None and (last or (finished and recipe.eval_interval > 0
                                                    and state["epoch"] % recipe.eval_interval == 0)):
                    _evaluate(ctx, tag)
    finally:
        bar.close()
        log.close()
    logger.info("done: %d epochs, %d iterations; last checkpoint %s", state["epoch"], state["iter"],
                state["checkpoint"])
    return {"work_dir": str(work_dir), **{k: state[k] for k in ("checkpoint", "epoch", "iter", "metrics",
                                                                 "bad_samples", "nonfinite_skipped")}}


def _resume(path, model, optimizer, scheduler, scaler, state, global_batch):
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: not a genattn training checkpoint (use it as weights instead)")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    for key in ("epoch", "iter", "iter_in_epoch", "bad_samples", "nonfinite_skipped"):
        state[key] = int(ckpt[key])
    state["metrics"] = ckpt.get("metrics") or {}
    state["checkpoint"] = str(path)
    old_batch = ckpt["meta"]["total_batch"]
    if old_batch != global_batch:
        logger.warning("resuming with total batch %d instead of %d: the data order and the learning rate change",
                       global_batch, old_batch)
        state["iter_in_epoch"] = state["iter_in_epoch"] * old_batch // global_batch
    rngs = ckpt["rng"]
    if len(rngs) == du.get_world_size():
        set_rng_state(rngs[du.get_rank()])
    else:
        seed_everything(int(ckpt["recipe"]["seed"]) + state["iter"] + du.get_rank())
    logger.info("resumed from %s: epoch %d, iteration %d", path, state["epoch"], state["iter"])


def _save(path: Path, ctx) -> None:
    st = ctx["state"]
    rngs = du.all_gather_object(rng_state())  # every rank's generators, so each resumes its own
    if du.is_main_process():
        payload = {"format": FORMAT, "model": ctx["model"].state_dict(), "optimizer": ctx["optimizer"].state_dict(),
                   "scheduler": ctx["scheduler"].state_dict(), "scaler": ctx["scaler"].state_dict(),
                   "recipe": ctx["recipe"].to_dict(), "meta": ctx["meta"], "rng": rngs, "metrics": st["metrics"],
                   **{k: st[k] for k in ("epoch", "iter", "iter_in_epoch", "bad_samples", "nonfinite_skipped")}}
        save_checkpoint(payload, path)
        logger.info("saved checkpoint %s", path)
    st["checkpoint"] = str(path)


def _evaluate(ctx, tag: str) -> None:
    recipe, st = ctx["recipe"], ctx["state"]
    logger.info("evaluating on %d images", len(ctx["val_ds"]))
    metrics = evaluate(ctx["net"], ctx["val_ds"], num_workers=recipe.workers, device=ctx["device"], amp=recipe.amp,
                       out_file=ctx["work_dir"] / f"{tag}.bbox.json")
    st["metrics"] = metrics
    if metrics.get("per_class"):
        logger.info("%s: %s", tag, format_metrics(metrics))
        mid_epoch = st["iter_in_epoch"] > 0  # a max_iters stop
        record = {"mode": "val", "epoch": st["epoch"] + mid_epoch,
                  "iter": st["iter_in_epoch"] if mid_epoch else ctx["iters_per_epoch"],
                  "lr": ctx["optimizer"].param_groups[0]["lr"],
                  **{VAL_KEYS[k]: round(metrics[k], 4) for k in VAL_KEYS}}
        ctx["log"].log(record, step=st["iter"])


def _train_epoch(loader, ctx) -> None:
    recipe, st, device, net = ctx["recipe"], ctx["state"], ctx["device"], ctx["net"]
    optimizer, scaler, bar = ctx["optimizer"], ctx["scaler"], ctx["bar"]
    net.train()
    sums: dict[str, float] = {}
    count, t_data, t_iter = 0, 0.0, 0.0
    tick = time.perf_counter()
    it = iter(loader)
    while st["iter"] < ctx["total_iters"] and st["iter_in_epoch"] < ctx["iters_per_epoch"]:
        try:
            images, targets = next(it)
        except StopIteration:
            break
        except ValueError as err:
            raise unwrap_loader_error(err) from None
        t_data += time.perf_counter() - tick
        new_bad = [msg for t in targets for msg in t.get("skipped", [])]
        for msg in new_bad:
            logger.warning("skipped an unreadable training image: %s", msg)
        lr = ctx["scheduler"].step(st["iter"], st["epoch"])
        images = [im.to(device, non_blocking=True) for im in images]
        model_targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        with autocast(device, recipe.amp):
            loss_dict = net(images, model_targets)
        loss = sum(loss_dict.values())
        # One collective per iteration so that every rank takes the same branch below.
        flags = torch.tensor([float(torch.isfinite(loss.detach()).item()), float(len(new_bad))], device=device)
        if du.is_distributed():
            torch.distributed.all_reduce(flags)
        st["bad_samples"] += int(flags[1].item())
        if st["bad_samples"] > recipe.max_bad_samples:
            first = new_bad[0] if new_bad else "an unreadable image on another rank"
            raise ValueError(f"{first} ({st['bad_samples']} unreadable training images, more than "
                             f"max_bad_samples={recipe.max_bad_samples})")
        if flags[0].item() < du.get_world_size():
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
            where = f"epoch {st['epoch'] + 1}, iteration {st['iter_in_epoch'] + 1} (global {st['iter'] + 1})"
            if recipe.nonfinite_loss == "raise":
                raise FloatingPointError(f"non-finite loss at {where}: {terms}")
            st["nonfinite_skipped"] += 1
            logger.warning("skipped the update at %s: non-finite loss (%s)", where, terms)
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.grad_clip_norm is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(ctx["params"], recipe.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            for k, v in loss_dict.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
        st["iter"] += 1
        st["iter_in_epoch"] += 1
        t_iter += time.perf_counter() - tick
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}", refresh=False)
        if st["iter_in_epoch"] % recipe.log_interval == 0 or st["iter"] == ctx["total_iters"] \
                or st["iter_in_epoch"] == ctx["iters_per_epoch"]:
            if count:  # (every update of the interval skipped: nothing to average)
                _log_interval(ctx, sums, count, t_data, t_iter, lr)
            sums, count, t_data, t_iter = {}, 0, 0.0, 0.0
        tick = time.perf_counter()


def _log_interval(ctx, sums, count, t_data, t_iter, lr) -> None:
    st, device = ctx["state"], ctx["device"]
    keys = sorted(sums)
    means = du.all_reduce_mean(torch.tensor([sums[k] / count for k in keys], dtype=torch.float64, device=device))
    losses = {k: round(float(v), 4) for k, v in zip(keys, means.tolist())}
    losses["loss"] = round(sum(losses.values()), 4)
    per_iter = t_iter / count
    record = {"mode": "train", "epoch": st["epoch"] + 1, "iter": st["iter_in_epoch"], "lr": lr,
              "memory": memory_mb(device), "data_time": round(t_data / count, 4), "time": round(per_iter, 4),
              **losses}
    ctx["log"].log(record, step=st["iter"])
    eta = datetime.timedelta(seconds=int(per_iter * (ctx["total_iters"] - st["iter"])))
    logger.info("Epoch [%d][%d/%d] lr: %.3e, eta: %s, time: %.3f, data_time: %.3f, memory: %d, %s",
                st["epoch"] + 1, st["iter_in_epoch"], ctx["iters_per_epoch"], lr, eta, per_iter, t_data / count,
                record["memory"], ", ".join(f"{k}: {v:.4f}" for k, v in losses.items()))
