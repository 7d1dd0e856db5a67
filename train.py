"""Train a face-recognition model (ContraFace by default) on insightface-layout data.

    python train.py                                        # one process: the GPU if any, else CPU
    torchrun --nproc_per_node=4 train.py                   # 4 GPUs (gloo on CPU processes)
    python -m torch.distributed.launch --nproc_per_node=4 train.py
    python train.py --dataset webface --set lr=0.05 --resume auto

Everything is configured in ``config/config.py`` (``--config`` picks another file or a preset of
``configs/``, ``--dataset`` another block, ``--set key=value`` any key). The method
(``cfg.method``: ``methods/``) owns the heads, losses and their state; this file builds it,
runs the loop and calls the callbacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from backbones import get_backbone
from methods import TrainingMethod, check_method_config
from training import checkpoints, run_folder
from training.callbacks import CallBackLogging, CallBackModelCheckpoint, CallBackVerification
from training.step import NonFiniteGuard, TrainStep, autocast_dtype, check_channels_last
from utils import run_files
from utils.cli import run_cli
from utils.config import DEFAULT_CONFIG, config_to_json, load_config, to_plain
from utils.distributed import DistEnv, all_gather_objects, barrier, cleanup, init_distributed
from utils.errors import ConfigError
from utils.loader import DataLoaderX, normalize_batch
from utils.logger import init_logging
from utils.lr_schedule import build_lr_schedule

log = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: config/config.py)")
    parser.add_argument("--dataset", help="dataset block of the config (emore, webface, ..., synthetic)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest checkpoint in the output folder, or from PATH")
    # torch.distributed.launch passes --local-rank (older versions --local_rank); torchrun sets LOCAL_RANK
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None)
    return parser.parse_args(argv)


def load_training_config(path: str | None = None, dataset: str | None = None, overrides: list[str] = ()) -> Any:
    """The config of ``path`` with the command line's changes, checked by the config loader and the method."""
    cfg = load_config(path, dataset, overrides)
    check_method_config(cfg)
    return cfg


def check_data_dir(cfg) -> None:
    """Fail before any set-up when the training data is not where the config says."""
    if os.path.isdir(cfg.rec):
        return
    hint = (
        "python -m tools.make_synthetic --output data/synthetic"
        if cfg.dataset == "synthetic"
        else "point `rec` at your insightface data folder (--set rec=/path/to/faces_emore), or try the "
        "built-in synthetic data: python -m tools.make_synthetic --output data/synthetic && "
        "python train.py --dataset synthetic"
    )
    raise FileNotFoundError(f"training data folder {cfg.rec!r} (dataset {cfg.dataset!r}, key `rec`) not found; {hint}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def network_kwargs(cfg) -> dict[str, Any]:
    """The backbone's keyword arguments from the config (None: the network's own default)."""
    kwargs = {"dropout": cfg.dropout, "num_features": cfg.embedding_size, "use_se": cfg.use_se,
              "width": cfg.network_width}
    return {key: value for key, value in kwargs.items() if value is not None}


def build_model(cfg, env: DistEnv, fresh: bool) -> tuple[TrainingMethod, torch.nn.Module]:
    """(method, model): the method on the device, its ``init_weights`` when ``fresh``; model wraps it (DDP, compile)."""
    method = check_method_config(cfg).from_config(cfg, get_backbone(cfg.network, **network_kwargs(cfg)), env)
    method = method.to(env.device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.init_weights and fresh:
        method.load_init_weights(cfg.init_weights)
    model: torch.nn.Module = method
    if env.distributed:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        # rank-local parameters (Partial FC's centers): each rank updates its own, DDP must not average them
        model = DistributedDataParallel(method, device_ids=device_ids, broadcast_buffers=False)
    if cfg.compile:
        model = torch.compile(model)  # the forward only; method keeps the uncompiled state dict
    return method, model


def build_optimizer(cfg, method: TrainingMethod, env: DistEnv) -> torch.optim.Optimizer:
    # one fused kernel on GPUs, multi-tensor (foreach) updates on CPUs: same maths as the loop
    fast = {"fused": True} if env.device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(
        method.param_groups(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fast
    )


def train(cfg, env: DistEnv, resume: str | None) -> None:
    autocast_dtype(cfg.amp, env.device)  # a GPU-only setting on a CPU fails before any set-up
    check_channels_last(cfg.channels_last, env.device, cfg.network_width)
    resume_path, checkpoint = run_folder.prepare_output(cfg.output, resume, env)
    init_logging(env.rank, cfg.output, run_files.LOG)
    seed_everything(cfg.seed + env.rank)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark

    # --- data ---------------------------------------------------------------------------------
    dataset, batches = check_method_config(cfg).train_data(cfg, env)
    cfg.num_classes = cfg.num_classes or dataset.num_classes
    loader = DataLoaderX(
        env.device,
        dataset=dataset,
        batch_sampler=batches,
        num_workers=cfg.num_workers,
        pin_memory=env.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{cfg.rec}: {len(dataset)} images give no full batch of {cfg.batch_size} on each of "
            f"{env.world_size} processes; lower batch_size"
        )
    total_step = steps_per_epoch * cfg.num_epoch
    lr_schedule = build_lr_schedule(cfg, steps_per_epoch)

    # --- model, optimiser, step ---------------------------------------------------------------
    method, model = build_model(cfg, env, fresh=not (resume_path or checkpoint))
    optimizer = build_optimizer(cfg, method, env)
    train_step = TrainStep(
        model, optimizer, amp=cfg.amp, device=env.device, grad_clip=cfg.grad_clip,
        clip_parameters=method.backbone.parameters(), channels_last=cfg.channels_last,
    )

    # --- state, callbacks ---------------------------------------------------------------------
    if resume_path and checkpoint is None:
        checkpoint = checkpoints.read_checkpoint(resume_path)
    if checkpoint:
        warn_config_changes(checkpoint["config"], to_plain(cfg))
    start_step = checkpoint["step"] if checkpoint else cfg.start_epoch * steps_per_epoch
    writer = (
        SummaryWriter(os.path.join(cfg.output, run_files.TENSORBOARD), purge_step=start_step + 1)
        if env.is_main else None
    )
    eval_step = cfg.eval_step or steps_per_epoch
    verification = CallBackVerification(
        env, eval_step, total_step, cfg.val_targets, cfg.rec, cfg.eval_batch_size, writer
    )
    if checkpoint:
        checkpoints.load_checkpoint(
            checkpoint, method=method, optimizer=optimizer, scaler=train_step.scaler, rank=env.rank,
            device=env.device, path=resume_path,
        )
        verification.load_state_dict(checkpoint["callbacks"].get("verification", {}))
        log.info(f"resumed from {resume_path} at step {start_step}")
        del checkpoint
    elif env.is_main:
        run_folder.write_config(cfg.output, config_to_json(cfg))
    log.info(f"config:\n{config_to_json(cfg)}")
    log.info(
        f"{env.world_size} process(es) on {env.device.type}; {len(dataset)} images, {cfg.num_classes} classes; "
        f"{steps_per_epoch} steps/epoch, {total_step} steps in all"
    )
    guard = NonFiniteGuard(env, cfg.output)

    def save(step: int) -> None:
        guard.check(step)  # a non-finite step must never reach a saved file
        method_state = method.checkpoint_state(optimizer)  # collective (Partial FC's shards reach rank 0)
        ranks = all_gather_objects(env, checkpoints.rank_state(method, env.device))
        if env.is_main:
            checkpoints.save_checkpoint(
                run_files.checkpoint_path(cfg.output, step),
                method_state=method_state,
                scaler=train_step.scaler,
                step=step,
                epoch=step // steps_per_epoch,
                ranks=ranks,
                network=cfg.network,
                network_kwargs=network_kwargs(cfg),
                callbacks={"verification": verification.state_dict()},
                config=to_plain(cfg),
            )
            run_folder.save_snapshot(cfg.output, method.backbone)
            checkpoints.prune_checkpoints(cfg.output, cfg.keep_checkpoints)
        barrier(env)

    def evaluate(step: int) -> None:
        guard.check(step)
        verification(step, method.backbone)
        if env.is_main:  # the weights of every evaluation, for IJB/MegaFace on the best epoch
            run_folder.save_snapshot(cfg.output, method.backbone, step, keep=cfg.keep_backbones)

    evaluation = CallBackModelCheckpoint(eval_step, total_step, evaluate)
    checkpointing = CallBackModelCheckpoint(cfg.save_step or steps_per_epoch, total_step, save)
    logging_cb = CallBackLogging(cfg.frequent, total_step, start_step, cfg.batch_size * env.world_size, writer)

    # --- training -----------------------------------------------------------------------------
    step = start_step
    for epoch in range(start_step // steps_per_epoch, cfg.num_epoch):
        batches.set_epoch(epoch, start=step - epoch * steps_per_epoch)  # > 0 only when resuming mid-epoch
        dataset.set_epoch(epoch)
        method.set_epoch(epoch)
        for images, labels in loader:
            images = normalize_batch(images.to(env.device, non_blocking=True))
            labels = labels.to(env.device, non_blocking=True)
            lr = cfg.lr * lr_schedule(step)
            out = train_step(images, labels, lr)
            guard.update(out["loss"], step)
            step += 1

            if step % cfg.frequent == 0:
                guard.check(step)
            logging_cb(step, epoch, {"Loss": out["loss"].detach(), **out["logs"]}, method.extra_state(), lr)
            evaluation(step)
            checkpointing(step)
    if writer is not None:
        writer.close()
    log.info(f"finished at step {step}; backbone: {os.path.join(cfg.output, run_files.BACKBONE)}")


def warn_config_changes(old: dict, new: dict) -> None:
    """Log every key whose value differs from the checkpoint's config."""
    for key in sorted(k for k in new if k in old and old[k] != new[k]):
        log.warning(f"resume: {key} changed from {old[key]!r} to {new[key]!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_training_config(args.config, args.dataset, args.set)
    check_data_dir(cfg)
    env = init_distributed(args.local_rank)
    try:
        train(cfg, env, args.resume)  # ends with save(), whose barrier lets the ranks leave together
    finally:
        cleanup(env)
    return 0


if __name__ == "__main__":
    # a user error (missing file, bad key, ...) or a NaN/inf loss: one line on stderr and in the log, exit 2
    run_cli(main, extra=(FloatingPointError,))
