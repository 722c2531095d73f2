"""The training loop: one code path for one process and for ``torchrun`` (DDP), MMDetection's 1x schedule.

Per iteration: set the learning rate (warmup, steps), forward under optional autocast, check the loss is finite
on every rank, backward (through a GradScaler for fp16), SGD step; a mid-epoch checkpoint when one is due
(:class:`~genattn.engine.preemption.CheckpointPolicy`). Per epoch: checkpoint, evaluate. On SIGTERM: a checkpoint
at the next iteration boundary, then :class:`~genattn.engine.preemption.Preempted` is raised.

Resuming restores model, optimizer, scheduler, scaler, counters and every rank's RNG states, and the sampler skips
the batches already done (flips depend on (seed, epoch, image) only), so a run resumed from any checkpoint,
mid-epoch or not, ends with the same weights as an uninterrupted one, whatever the number of loader workers.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from genattn.data import CocoDetection, GroupedBatchSampler, collate
from genattn.engine import distributed as du
from genattn.engine.build import DataFiles, check_categories, dataset_classes, seed_everything, training_datasets
from genattn.engine.checkpoint import (find_latest, load_training_checkpoint, prune_iter_checkpoints, rng_state,
                                       save_checkpoint, set_rng_state)
from genattn.engine.evaluate import autocast, evaluate, format_metrics, unwrap_loader_error
from genattn.engine.logger import VAL_KEYS, JsonLogger, drop_records_after, memory_mb, reset_peak_memory
from genattn.engine.preemption import CheckpointPolicy, Preempted, ignore_stop_signals
from genattn.engine.recipes import Recipe
from genattn.engine.runlog import run_logging
from genattn.engine.schedule import WarmupMultiStepLR
from genattn.models.classes import Classes
from genattn.models.weights import genattn_record, load_model

__all__ = ["train", "TrainState"]

logger = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The counters a run resumes from, and what it has produced so far."""

    epoch: int = 0  # completed epochs
    iter: int = 0  # completed iterations
    iter_in_epoch: int = 0  # iterations done in the current epoch (0 at an epoch boundary)
    bad_samples: int = 0
    nonfinite_skipped: int = 0
    checkpoint: str | None = None
    metrics: dict = field(default_factory=dict)

    COUNTERS = ("epoch", "iter", "iter_in_epoch", "bad_samples", "nonfinite_skipped")

    def counters(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.COUNTERS}


@dataclass
class _Run:
    """Everything one training run holds, passed to the loop's steps."""

    recipe: Recipe
    device: torch.device
    work_dir: Path
    classes: Classes
    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DDP wrapper
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: WarmupMultiStepLR
    scaler: torch.amp.GradScaler
    val_ds: CocoDetection | None
    meta: dict[str, Any]
    iters_per_epoch: int
    total_iters: int
    state: TrainState
    train_ds: CocoDetection
    sampler: GroupedBatchSampler
    policy: CheckpointPolicy
    log: JsonLogger | None = None
    bar: Any = None


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
        work_dir: run directory (default ``work_dirs/<model name>``): recipe.json, log.json, train.log,
            checkpoints ``epoch_N.pth`` and ``iter_N.pth`` (mid-epoch: every ``checkpoint_interval_iters``, on
            SIGTERM, when ``max_iters`` stops mid-epoch), ``last_checkpoint``, detections ``epoch_N.bbox.json``.
        resume: checkpoint to continue from.
        auto_resume: continue from the run directory's latest checkpoint (mid-epoch or epoch) if there is one
            (``resume`` wins).
        model: use this detector instead of building the recipe's (it must follow genattn's detector call
            convention); the recipe still sets everything else.
        progress: show a progress bar (rank 0).

    Returns:
        ``{'work_dir', 'checkpoint' (last one written), 'epoch', 'iter', 'metrics' (last evaluation, with its
        detections file as ``'results_file'``, or {}),
        'bad_samples', 'nonfinite_skipped'}``.

    Raises:
        ValueError: bad input (data, annotations, too many unreadable images), naming the file and the reason.
        FloatingPointError: a non-finite loss with ``recipe.nonfinite_loss == 'raise'``, naming the iteration.
        Preempted: SIGTERM reached a process (its handler is set when ``train`` runs in the main thread): a
            checkpoint was written at the next iteration boundary and the run stopped; resume with ``auto_resume``.
    """
    device, created_group = du.init_distributed(recipe.device)
    rank = du.get_rank()
    work_dir = Path(work_dir) if work_dir is not None else Path("work_dirs") / recipe.name
    if rank == 0:
        work_dir.mkdir(parents=True, exist_ok=True)
    du.barrier()
    files = DataFiles(data_root, train_ann, train_images, val_ann, val_images)
    try:
        with run_logging(work_dir / "train.log", rank):
            logger.info("run directory: %s", work_dir.resolve())
            if resume is None and auto_resume:
                resume = find_latest(work_dir)
                if resume is None:
                    logger.info("auto-resume: no checkpoint in %s, starting afresh", work_dir)
            run = _setup(recipe, device, work_dir, files, resume, model)
            try:
                _loop(run, progress and rank == 0)
            except Preempted:
                _release_group(run)  # every process stopped after the same iteration
                raise
            _release_group(run)
            st = run.state
            logger.info("done: %d epochs, %d iterations; last checkpoint %s", st.epoch, st.iter, st.checkpoint)
            return {"work_dir": str(work_dir), "checkpoint": st.checkpoint, "epoch": st.epoch, "iter": st.iter,
                    "metrics": st.metrics, "bad_samples": st.bad_samples,
                    "nonfinite_skipped": st.nonfinite_skipped}
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _release_group(run: _Run) -> None:
    """Free the DDP wrapper, whose reducer holds the process group, while every process is still in the group, and
    wait for all of them before the group is destroyed. With torch 2.9.1's gloo, half of the two-process runs hung
    in the group's destructor when one process freed its wrapper after the other had destroyed the group. Call it
    only where every process arrives (a finished run, an agreed stop)."""
    if du.is_distributed():
        run.net = run.model
        gc.collect()  # the wrapper and its reducer may sit in reference cycles
        du.barrier()


def _setup(recipe: Recipe, device: torch.device, work_dir: Path, files: DataFiles, resume, model) -> _Run:
    """Data, model, optimiser, schedule and state of a run (restored from ``resume`` if given)."""
    rank, world = du.get_rank(), du.get_world_size()
    train_ds, val_ds = training_datasets(recipe, files)
    classes = dataset_classes(train_ds)
    seed_everything(recipe.seed)
    if model is None:
        # A resumed run takes every weight from its checkpoint: no ImageNet initialisation (or download) first.
        model, _ = load_model(recipe, classes=classes,
                              pretrained_backbone=recipe.pretrained_backbone if resume is None else None)
    check_categories(model, train_ds)
    model.to(device)
    reset_peak_memory(device)
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
                "%d iterations in all", recipe.name, device, world, recipe.imgs_per_gpu,
                sampler.global_batch_size, lr, iters_per_epoch, total_iters)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=recipe.find_unused_parameters)
    meta = {"world_size": world, "iters_per_epoch": iters_per_epoch, "total_batch": sampler.global_batch_size}
    run = _Run(recipe, device, work_dir, classes, model, net, params, optimizer, scheduler, scaler, val_ds, meta,
               iters_per_epoch, total_iters, TrainState(), train_ds, sampler,
               CheckpointPolicy(recipe.checkpoint_interval_iters, recipe.checkpoint_interval_minutes))
    if resume is not None:
        _resume(Path(resume), run)
    return run


def _loop(run: _Run, progress: bool) -> None:
    recipe, st = run.recipe, run.state
    run.log = JsonLogger(run.work_dir, tensorboard=recipe.tensorboard, enabled=du.get_rank() == 0)
    run.bar = tqdm(total=run.total_iters, initial=st.iter, desc="train", dynamic_ncols=True, disable=not progress)
    # Route console log lines through tqdm so they do not break the bar (only loggers that print to a console).
    consoles = [lg for lg in (logging.getLogger("genattn"), logging.getLogger())
                if any(type(h) is logging.StreamHandler for h in lg.handlers)] if progress else []
    policy = run.policy
    try:
        with logging_redirect_tqdm(loggers=consoles), policy.stop:
            while st.iter < run.total_iters and policy.stopped_by is None:
                epoch = st.epoch
                run.train_ds.set_epoch(epoch)
                run.sampler.set_epoch(epoch, start_batch=st.iter_in_epoch)
                loader = torch.utils.data.DataLoader(
                    run.train_ds, batch_sampler=run.sampler, collate_fn=collate, num_workers=recipe.workers,
                    pin_memory=run.device.type == "cuda", worker_init_fn=ignore_stop_signals,
                    generator=torch.Generator().manual_seed(recipe.seed * 1000 + epoch))
                _train_epoch(loader, run)
                finished = st.iter_in_epoch == run.iters_per_epoch
                if finished:
                    st.epoch, st.iter_in_epoch = epoch + 1, 0
                last = st.iter >= run.total_iters
                if not (finished or last):
                    break  # stopped mid-epoch, checkpoint written
                tag = f"epoch_{st.epoch}" if finished else f"iter_{st.iter}"  # file names
                if last or (finished and st.epoch % recipe.checkpoint_interval == 0):
                    _save(run, tag)
                elif policy.pending:
                    _save(run, f"iter_{st.iter}")
                if run.val_ds is not None and (last or (finished and recipe.eval_interval > 0
                                                        and st.epoch % recipe.eval_interval == 0)):
                    if last or policy.stopped_by is None:
                        _evaluate(run, tag)
                    else:
                        logger.warning("stopping: evaluation skipped (run 'genattn test' on %s)", st.checkpoint)
                if not last and policy.stopped_by is None:
                    policy.agree_to_stop(st.iter, run.device)  # a signal during the epoch's end
    finally:
        run.bar.close()
        run.log.close()
    if policy.stopped_by is not None and st.iter < run.total_iters:
        if policy.saved_at != st.iter:
            _save(run, f"iter_{st.iter}")
        raise Preempted(st.checkpoint, st.iter, policy.stopped_by)


def _resume(path: Path, run: _Run) -> None:
    ckpt = load_training_checkpoint(path)
    st = run.state
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    for key in TrainState.COUNTERS:
        setattr(st, key, int(ckpt.get(key, 0)))
    st.metrics = ckpt.get("metrics") or {}
    st.checkpoint = str(path)
    old_batch = ckpt["meta"]["total_batch"]
    global_batch = run.meta["total_batch"]
    if old_batch != global_batch:
        logger.warning("resuming with total batch %d instead of %d: the data order and the learning rate change",
                       global_batch, old_batch)
        st.iter_in_epoch = st.iter_in_epoch * old_batch // global_batch
    rngs = ckpt["rng"]
    if len(rngs) == du.get_world_size():
        set_rng_state(rngs[du.get_rank()])
    else:
        seed_everything(int(ckpt["recipe"]["seed"]) + st.iter + du.get_rank())
    logger.info("resumed from %s: epoch %d, iteration %d", path, st.epoch, st.iter)
    if du.is_main_process():  # the stopped run may have logged iterations after its checkpoint: they run again
        dropped = drop_records_after(run.work_dir / "log.json", ckpt["meta"]["iters_per_epoch"], ckpt["iter"])
        if dropped:
            logger.info("log.json: removed %d record(s) of iterations after the checkpoint (logged before the "
                        "run stopped; they are run and logged again)", dropped)


def _save(run: _Run, tag: str) -> None:
    """Write checkpoint ``work_dir/tag.pth`` (a collective); after a mid-epoch one, delete the surplus ones."""
    st, path, keep = run.state, run.work_dir / f"{tag}.pth", run.recipe.keep_iter_checkpoints
    rngs = du.all_gather_object(rng_state())  # every rank's generators, so each resumes its own
    if du.is_main_process():
        payload = genattn_record(
            run.model.state_dict(), run.recipe, run.classes, optimizer=run.optimizer.state_dict(),
            scheduler=run.scheduler.state_dict(), scaler=run.scaler.state_dict(), recipe=run.recipe.to_dict(),
            meta=run.meta, rng=rngs, metrics=st.metrics, **st.counters())
        save_checkpoint(payload, path)
        logger.info("saved checkpoint %s", path)
        for old in prune_iter_checkpoints(run.work_dir, keep, st.iter) if tag.startswith("iter_") else ():
            logger.info("deleted checkpoint %s (keep_iter_checkpoints=%d)", old, keep)
    st.checkpoint = str(path)
    run.policy.saved(st.iter)


def _evaluate(run: _Run, tag: str) -> None:
    recipe, st = run.recipe, run.state
    logger.info("evaluating on %d images", len(run.val_ds))
    out_file = run.work_dir / f"{tag}.bbox.json"
    metrics = evaluate(run.net, run.val_ds, num_workers=recipe.workers, device=run.device, amp=recipe.amp,
                       out_file=out_file)
    metrics["results_file"] = str(out_file)  # the detections behind these numbers (written by rank 0)
    st.metrics = metrics
    if metrics.get("per_class"):
        logger.info("%s: %s", tag, format_metrics(metrics))
        mid_epoch = st.iter_in_epoch > 0  # a max_iters stop
        record = {"mode": "val", "epoch": st.epoch + mid_epoch,
                  "iter": st.iter_in_epoch if mid_epoch else run.iters_per_epoch,
                  "lr": run.optimizer.param_groups[0]["lr"],
                  **{VAL_KEYS[k]: round(metrics[k], 4) for k in VAL_KEYS}}
        run.log.log(record, step=st.iter)


def _train_epoch(loader, run: _Run) -> None:
    recipe, st, device, net = run.recipe, run.state, run.device, run.net
    optimizer, scaler, bar = run.optimizer, run.scaler, run.bar
    net.train()
    sums: dict[str, float] = {}
    count, t_data, t_iter = 0, 0.0, 0.0
    tick = time.perf_counter()
    it = iter(loader)
    while st.iter < run.total_iters and st.iter_in_epoch < run.iters_per_epoch:
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
        lr = run.scheduler.step(st.iter, st.epoch)
        images = [im.to(device, non_blocking=True) for im in images]
        model_targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device),
                          "flip": t.get("flip", False)} for t in targets]
        with autocast(device, recipe.amp):
            loss_dict = net(images, model_targets)
        loss = sum(loss_dict.values())
        # One collective per iteration so that every rank takes the same branches below.
        flags = torch.tensor([float(torch.isfinite(loss.detach()).item()), float(len(new_bad)),
                              *run.policy.local_flags()], device=device)
        if du.is_distributed():
            torch.distributed.all_reduce(flags)
        st.bad_samples += int(flags[1].item())
        if st.bad_samples > recipe.max_bad_samples:
            first = new_bad[0] if new_bad else "an unreadable image on another rank"
            raise ValueError(f"{first} ({st.bad_samples} unreadable training images, more than "
                             f"max_bad_samples={recipe.max_bad_samples})")
        if flags[0].item() < du.get_world_size():
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
            where = f"epoch {st.epoch + 1}, iteration {st.iter_in_epoch + 1} (global {st.iter + 1})"
            if recipe.nonfinite_loss == "raise":
                raise FloatingPointError(f"non-finite loss at {where}: {terms}")
            st.nonfinite_skipped += 1
            logger.warning("skipped the update at %s: non-finite loss (%s)", where, terms)
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.grad_clip_norm is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                torch.nn.utils.clip_grad_norm_(run.params, recipe.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            for k, v in loss_dict.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
        st.iter += 1
        st.iter_in_epoch += 1
        t_iter += time.perf_counter() - tick
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}", refresh=False)
        if st.iter_in_epoch % recipe.log_interval == 0 or st.iter == run.total_iters \
                or st.iter_in_epoch == run.iters_per_epoch:
            if count:  # (every update of the interval skipped: nothing to average)
                _log_interval(run, sums, count, t_data, t_iter, lr)
            sums, count, t_data, t_iter = {}, 0, 0.0, 0.0
        if run.policy.after_iteration(st.iter, flags[2:].tolist()):
            if st.iter_in_epoch < run.iters_per_epoch and st.iter < run.total_iters:
                _save(run, f"iter_{st.iter}")
            else:
                run.policy.pending = True  # the epoch's end writes it
        if run.policy.stopped_by is not None:
            break
        tick = time.perf_counter()


def _log_interval(run: _Run, sums, count, t_data, t_iter, lr) -> None:
    st, device = run.state, run.device
    keys = sorted(sums)
    means = du.all_reduce_mean(torch.tensor([sums[k] / count for k in keys], dtype=torch.float64, device=device))
    losses = {k: round(float(v), 4) for k, v in zip(keys, means.tolist())}
    losses["loss"] = round(sum(losses.values()), 4)
    per_iter = t_iter / count
    record = {"mode": "train", "epoch": st.epoch + 1, "iter": st.iter_in_epoch, "lr": lr,
              "memory": memory_mb(device), "data_time": round(t_data / count, 4), "time": round(per_iter, 4),
              **losses}
    run.log.log(record, step=st.iter)
    eta = datetime.timedelta(seconds=int(per_iter * (run.total_iters - st.iter)))
    logger.info("Epoch [%d][%d/%d] lr: %.3e, eta: %s, time: %.3f, data_time: %.3f, memory: %d, %s",
                st.epoch + 1, st.iter_in_epoch, run.iters_per_epoch, lr, eta, per_iter, t_data / count,
                record["memory"], ", ".join(f"{k}: {v:.4f}" for k, v in losses.items()))
