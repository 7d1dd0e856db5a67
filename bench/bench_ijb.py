"""Benchmark: IJB feature extraction, parallel workers + batched inference vs insightface's sequential loop.

    python -m tools.make_synthetic_ijb --output /tmp/bench_ijb --subjects 40
    python bench/bench_ijb.py --data-root /tmp/bench_ijb [--network iresnet18 --width 8] [--workers 2]

End to end on one IJB tree: image list -> aligned crops -> embeddings of every face and its
mirror -> 1:1 TAR@FAR (N1D1F1). Baseline: insightface's ``ijb_11.py`` style, one image at a time in
the main process (cv2.imread, 5-point alignment, mirror; a batch of faces and mirrors
interleaved, converted to float and normalised, then the network). Ours: ``eval.ijb.ijb_eval.
extract_features`` (decoding and alignment in worker threads, uint8 batches
normalised on the device by the Embedder). Both use the same backbone; the TARs must agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backbones import get_backbone  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from eval.alignment import norm_crop  # noqa: E402
from eval.embedder import Embedder  # noqa: E402
from eval.ijb import metrics  # noqa: E402
from eval.ijb.data import IJBAlignedFaces, load_meta  # noqa: E402
from eval.ijb.ijb_eval import extract_features, template_features  # noqa: E402
from utils.cli import run_cli  # noqa: E402


@torch.inference_mode()
def insightface_features(meta, backbone: torch.nn.Module, batch_size: int, device: torch.device
                         ) -> tuple[np.ndarray, np.ndarray]:
    """insightface's get_image_feature: read, align and mirror one image at a time, batch, embed."""
    embs, embs_flip, batch = [], [], []

    def flush() -> None:
        imgs = torch.from_numpy(np.stack(batch)).to(device).float()  # faces and mirrors interleaved
        imgs.div_(255).sub_(0.5).div_(0.5)
        out = backbone(imgs).float().cpu().numpy()
        embs.append(out[0::2])
        embs_flip.append(out[1::2])
        batch.clear()

    for i, name in enumerate(meta.names):
        img = cv2.imread(os.path.join(meta.paths.image_dir, name), cv2.IMREAD_COLOR)
        crop = cv2.cvtColor(norm_crop(img, meta.landmarks[i].reshape(5, 2)), cv2.COLOR_BGR2RGB)
        chw = crop.transpose(2, 0, 1)
        batch += [chw, chw[:, :, ::-1]]
        if len(batch) == 2 * batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(embs), np.concatenate(embs_flip)


def tar_table(meta, embs: np.ndarray, embs_flip: np.ndarray, mode: str = "N1D1F1") -> dict[str, float]:
    """1:1 TAR at each FAR of the protocol's table, for one test mode."""
    feats, templates = template_features(meta, embs, embs_flip, mode)
    scores = metrics.verification(feats, templates, meta.p1, meta.p2)
    return metrics.evaluate_1v1(meta.label, scores)["tar_at_far"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="folder holding IJBC/ (tools.make_synthetic_ijb)")
    parser.add_argument("--target", default="IJBC")
    parser.add_argument("--network", default="iresnet18")
    parser.add_argument("--width", type=int, default=8, help="iresnet width (default 8: a CPU-sized network)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each path, alternating; the best is kept")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta = load_meta(args.data_root, args.target)
    torch.manual_seed(0)
    backbone = get_backbone(args.network, width=args.width).to(device).eval()
    embedder = Embedder.from_module(backbone, device=device, batch_size=args.batch_size, amp=False)
    dataset = IJBAlignedFaces(meta.paths.image_dir, meta.names, meta.landmarks)

    times = {"baseline": float("inf"), "ours": float("inf")}
    for _ in range(args.repeat):
        start = time.perf_counter()
        ref = insightface_features(meta, backbone, args.batch_size, device)
        ref_tar = tar_table(meta, *ref)
        times["baseline"] = min(times["baseline"], time.perf_counter() - start)
        start = time.perf_counter()
        ours = extract_features(embedder, dataset, args.batch_size, args.workers)
        ours_tar = tar_table(meta, *ours)
        times["ours"] = min(times["ours"], time.perf_counter() - start)

    n = len(meta.names)
    print(f"machine: {describe_machine()}")
    print(f"data: {args.data_root} {args.target}, {n} images, {len(np.unique(meta.templates))} templates, "
          f"{len(meta.p1)} pairs; {args.network} width {args.width}, batch {args.batch_size}, {device}, "
          f"best of {args.repeat}")
    print(f"{'path':<66}{'seconds':>9}{'faces/s':>9}{'ratio':>8}")
    rows = [("insightface-style: sequential read + align, batched network (baseline)", times["baseline"]),
            (f"ours: {args.workers} reading threads, uint8 batches normalised on {device.type}", times["ours"])]
    for name, seconds in rows:
        print(f"{name:<66}{seconds:>9.2f}{n / seconds:>9.1f}{times['baseline'] / seconds:>8.2f}")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, ours))
    print("TAR@FAR N1D1F1 " + " ".join(f"{k}: {v:.4f}" for k, v in ours_tar.items()))
    print(f"TARs identical to the baseline's: {'yes' if ours_tar == ref_tar else 'NO: ' + str(ref_tar)}; "
          f"largest feature difference {diff:.2g}")


if __name__ == "__main__":
    run_cli(main)
