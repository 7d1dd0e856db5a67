"""Train a face-recognition model (ContraFace by default) on insightface-layout data.

    python train.py                                        # one process: the GPU if any, else CPU
    torchrun --nproc_per_node=4 train.py                   # 4 GPUs (gloo on CPU processes)
    python -m torch.distributed.launch --nproc_per_node=4 train.py
    python train.py --dataset webface --set lr=0.05 --resume auto

Everything is configured in ``config/config.py`` (``--config`` picks another file, ``--dataset``
another block, ``--set key=value`` any key).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import warnings

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import clip_grad_norm_
from torch.utils.tensorboard import SummaryWriter

from backbones import get_backbone
from losses import METHODS, PartialFC, build_method
from losses.partial_fc import sharded_parameter_names
from utils import train_state
from utils.callbacks import CallBackLogging, CallBackModelCheckpoint, CallBackVerification
from utils.checkpoint import apply_state, extract_backbone_state, load_state
from utils.cli import run_cli
from utils.config import DEFAULT_CONFIG, ConfigError, config_to_json, load_config, to_plain
from utils.dataset import DataLoaderX, normalize_batch
from utils.distributed import DistEnv, all_gather_objects, barrier, broadcast_object, cleanup, init_distributed
from utils.fileio import atomic_path
from utils.logger import init_logging
from utils.sharded_state import checkpoint_centers, gather_sharded_state
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


def prepare_output(cfg, resume: str | None, env: DistEnv) -> tuple[str | None, dict | None]:
    """Decide (on rank 0) which checkpoint to resume from; refuse to overwrite an existing run.

    Returns the checkpoint's path and, where choosing it already loaded it (rank 0 of
    ``--resume auto``), the checkpoint itself, so that it is not read twice.
    """
    decision: tuple[str | None, str | None] = (None, None)  # (checkpoint path, error)
    loaded = None
    if env.is_main:
        existing = train_state.list_checkpoints(cfg.output) or os.path.exists(os.path.join(cfg.output, "config.json"))
        if resume == "auto":
            found = train_state.find_resume_checkpoint(cfg.output)
            if found:
                decision, loaded = (found[0], None), found[1]
        elif resume:
            decision = (resume, None if os.path.isfile(resume) else f"--resume {resume}: file not found")
        elif existing:
            decision = (
                None,
                f"{cfg.output} already holds a training run; continue it with --resume auto, "
                "or choose another folder with --set output=...",
            )
    path, error = broadcast_object(env, decision)
    if error:
        raise FileExistsError(error) if "already holds" in error else FileNotFoundError(error)
    return path, loaded


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` (None: fp32)."""
    if amp == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"amp={amp} needs a CUDA GPU; use --set amp=none on {device.type}")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def train(cfg, env: DistEnv, resume: str | None) -> None:
    amp_dtype = autocast_dtype(cfg.amp, env.device)
    resume_path, checkpoint = prepare_output(cfg, resume, env)
    init_logging(env.rank, cfg.output)
    seed_everything(cfg.seed + env.rank)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark

    # --- data ---------------------------------------------------------------------------------
    dataset, batches = METHODS[cfg.method].train_data(cfg, env)
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

    # --- model, optimiser ---------------------------------------------------------------------
    network_kwargs = dict(dropout=cfg.dropout, num_features=cfg.embedding_size)
    if cfg.use_se or cfg.network_width != 64:  # iresnet-only options (mobilefacenet has neither)
        network_kwargs.update(use_se=cfg.use_se, width=cfg.network_width)
    method = build_method(cfg, get_backbone(cfg.network, **network_kwargs)).to(env.device)
    if cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.init_weights and not (resume_path or checkpoint):
        load_init_weights(method, cfg.init_weights)
    model = method
    if env.distributed:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        # Partial FC's centers are sharded: each rank updates its own block, DDP must not average them
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, sharded_parameter_names(method))
        with warnings.catch_warnings():
            # newer torch deprecates broadcast_buffers but has no other way yet to keep buffers
            # rank-local from the start (BatchNorm statistics, the ContraFace margin) as the reference
            warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
            model = DistributedDataParallel(method, device_ids=device_ids, broadcast_buffers=False)
    if cfg.compile:
        model = torch.compile(model)  # the forward only; method keeps the uncompiled state dict
    # one fused kernel on GPUs, multi-tensor (foreach) updates on CPUs: same maths as the loop
    fast = {"fused": True} if env.device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.SGD(
        method.param_groups(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fast
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")

    # --- state, callbacks ---------------------------------------------------------------------
    if resume_path and checkpoint is None:
        checkpoint = train_state.read_checkpoint(resume_path)
    if checkpoint:
        warn_config_changes(checkpoint["config"], to_plain(cfg))
    start_step = checkpoint["step"] if checkpoint else cfg.start_epoch * steps_per_epoch
    writer = SummaryWriter(os.path.join(cfg.output, "tensorboard"), purge_step=start_step + 1) if env.is_main else None
    eval_step = cfg.eval_step or steps_per_epoch
    verification = CallBackVerification(
        env, eval_step, total_step, cfg.val_targets, cfg.rec, cfg.eval_batch_size, writer
    )
    if checkpoint:
        train_state.load_checkpoint(
            checkpoint, method=method, optimizer=optimizer, scaler=scaler, rank=env.rank, device=env.device,
            path=resume_path,
        )
        verification.load_state_dict(checkpoint["callbacks"].get("verification", {}))
        log.info(f"resumed from {resume_path} at step {start_step}")
        del checkpoint
    elif env.is_main:
        with atomic_path(os.path.join(cfg.output, "config.json")) as tmp, open(tmp, "w") as f:
            f.write(config_to_json(cfg))
    log.info(f"config:\n{config_to_json(cfg)}")
    log.info(
        f"{env.world_size} process(es) on {env.device.type}; {len(dataset)} images, {cfg.num_classes} classes; "
        f"{steps_per_epoch} steps/epoch, {total_step} steps in all"
    )
    guard = NonFiniteGuard(env, cfg.output)

    def save(step: int) -> None:
        guard.check(step)  # a non-finite step must never reach a saved file
        ranks = all_gather_objects(env, train_state.rank_state(method, env.device))
        sharded = gather_sharded_state(method, optimizer)  # Partial FC's centers of every rank, on rank 0
        if env.is_main:
            train_state.save_checkpoint(
                train_state.checkpoint_path(cfg.output, step),
                method=method,
                optimizer=optimizer,
                scaler=scaler,
                step=step,
                epoch=step // steps_per_epoch,
                ranks=ranks,
                network=cfg.network,
                network_kwargs=network_kwargs,
                callbacks={"verification": verification.state_dict()},
                config=to_plain(cfg),
                sharded=sharded,
            )
            train_state.save_backbone(os.path.join(cfg.output, "backbone.pth"), method.backbone)
            train_state.prune_checkpoints(cfg.output, cfg.keep_checkpoints)
        barrier(env)

    def evaluate(step: int) -> None:
        guard.check(step)
        verification(step, method.backbone)
        if env.is_main:  # the weights of every evaluation, for IJB/MegaFace on the best epoch
            train_state.save_backbone(train_state.backbone_path(cfg.output, step), method.backbone)
            train_state.prune_backbones(cfg.output, cfg.keep_backbones)

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
            if cfg.channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(env.device, non_blocking=True)
            lr = cfg.lr * lr_schedule(step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

            with torch.autocast(env.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(images, labels)
            loss = out["loss"]
            guard.update(loss, step)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                clip_grad_norm_(method.backbone.parameters(), max_norm=cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1

            if step % cfg.frequent == 0:
                guard.check(step)
            logging_cb(step, epoch, {"Loss": loss.detach(), **out["logs"]}, method.extra_state(), lr)
            evaluation(step)
            checkpointing(step)
    if writer is not None:
        writer.close()
    log.info(f"finished at step {step}; backbone: {os.path.join(cfg.output, 'backbone.pth')}")


def load_init_weights(method: torch.nn.Module, path: str) -> None:
    """Start from another run's weights (``init_weights``): the backbone, and the centers if they fit."""
    obj = load_state(path)
    state, meta = extract_backbone_state(obj, path)
    apply_state(method.backbone, state, meta)
    method.backbone_loaded()
    head = getattr(method, "head", None)
    kernel = getattr(head, "kernel", None)
    if not isinstance(kernel, torch.Tensor):
        log.info(f"init_weights: backbone from {path} (this method has no class centers)")
        return
    # all classes, or this rank's block where Partial FC shards the head
    num_classes = head.num_classes if isinstance(head, PartialFC) else kernel.shape[1]
    start, stop = head.class_range if isinstance(head, PartialFC) else (0, num_classes)
    if not (isinstance(obj, dict) and isinstance(obj.get("head"), dict)):
        obj = {"head": {"head.kernel": meta.get("header", {}).get("kernel")}}  # the original {step}model.pth
    centers, why = checkpoint_centers(obj, num_classes, start, stop)  # replicated or sharded runs
    if centers is not None and centers.shape == kernel.shape:
        with torch.no_grad():
            kernel.copy_(centers)
        log.info(f"init_weights: backbone and class centers from {path}")
        return
    log.info(f"init_weights: backbone from {path}; class centers start fresh ({why or 'they do not fit'})")


def warn_config_changes(old: dict, new: dict) -> None:
    """Log every key whose value differs from the checkpoint's config."""
    for key in sorted(k for k in new if k in old and old[k] != new[k]):
        log.warning(f"resume: {key} changed from {old[key]!r} to {new[key]!r}")


class NonFiniteGuard:
    """Remembers on the device the first step whose loss was NaN or inf; ``check`` reads it.

    ``update`` runs every step without waiting for the host; ``check`` (every ``frequent``
    steps, and before every evaluation and checkpoint) agrees across ranks and stops all of
    them with the same message, so a non-finite step never reaches a saved file.
    """

    _NONE = torch.iinfo(torch.int64).max

    def __init__(self, env: DistEnv, output: str):
        self.env, self.output = env, output
        self.first_bad = torch.full((), self._NONE, dtype=torch.int64, device=env.device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        """Record ``step`` (0-based) if its loss is not finite and none was before."""
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad == self._NONE)
        self.first_bad.masked_fill_(bad, step)

    def check(self, step: int) -> None:
        """Raise FloatingPointError on every rank when any rank saw a non-finite loss."""
        first_bad = self.first_bad.clone()
        if self.env.distributed:
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MIN)
        bad = int(first_bad)
        if bad == self._NONE:
            return
        found = train_state.list_checkpoints(self.output)
        last = found[-1][1] if found else "none yet"
        raise FloatingPointError(
            f"non-finite loss at step {bad + 1} (noticed at step {step}); stopped without saving. "
            f"Last good checkpoint: {last} (continue with --resume auto, e.g. with a lower lr or "
            "--set amp=none)"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.dataset, args.set)
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
