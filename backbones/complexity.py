"""Parameter and FLOP counts for backbones; ``python -m backbones.complexity iresnet50``.

FLOP convention (the one insightface's arcface_torch uses for its "GFLOPs" column, i.e.
ptflops' multiply-accumulate count): ``count_flops`` returns MACs, counted with forward hooks
on leaf modules during one eval-mode forward pass of a zero tensor:

* Conv2d / Linear: one MAC per weight use (out elements x in-channels/groups x kernel area),
  plus one per output element for a bias;
* BatchNorm1d/2d: 2 per element when affine (scale + shift), else 1;
* PReLU / ReLU / Sigmoid: 1 per element;
* pooling: 1 per input element.

Not counted: residual additions, the SE gating multiply, dropout, flatten (all cheap, and
ptflops ignores them too). With this convention iresnet50 is 6.3 G and iresnet100 12.1 G,
the numbers in insightface's arcface_torch README (REFERENCE_GMACS). Papers in the ElasticFace
line (ElasticFace, ContraFace) count a multiply-add as 2 FLOPs and quote about twice these
figures (iresnet100: 24.2 GFLOPs); the CLI prints both.
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

import torch
from torch import nn

from backbones import BACKBONES, get_backbone, list_backbones
from utils.cli import run_cli

logger = logging.getLogger(__name__)

# Published numbers (insightface arcface_torch README, ptflops MACs at 112x112, in G).
REFERENCE_GMACS = {"iresnet50": 6.3, "iresnet100": 12.1}

_ACTIVATIONS = (nn.PReLU, nn.ReLU, nn.Sigmoid)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
# Leaf modules that do no arithmetic worth counting.
_FREE = (nn.Dropout, nn.Identity, nn.Flatten)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with requires_grad if trainable_only).

    ptflops (insightface's "Mparams") counts trainable ones only; for iresnet the difference
    is the frozen ``features.weight`` (num_features elements).
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kernel = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
    return out.numel() * kernel + (out.numel() if m.bias is not None else 0)


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out.numel() * m.in_features + (out.numel() if m.bias is not None else 0)


def _module_macs(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int | None:
    """MACs of one leaf-module call, or None if its type is not counted."""
    if isinstance(m, nn.Conv2d):
        return _conv_macs(m, out)
    if isinstance(m, nn.Linear):
        return _linear_macs(m, out)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return inp.numel() * (2 if m.affine else 1)
    if isinstance(m, _ACTIVATIONS):
        return inp.numel()
    if isinstance(m, _POOLS):
        return inp.numel()
    if isinstance(m, _FREE):
        return 0
    return None


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 112, 112)) -> int:
    """Multiply-accumulates of one forward pass on ``input_size`` (see module docstring)."""
    total = 0
    uncounted: set[str] = set()

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        macs = _module_macs(m, args[0], out)
        if macs is None:
            uncounted.add(type(m).__name__)
        else:
            total += macs

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(tuple(input_size), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if uncounted:
        names = ", ".join(sorted(uncounted))
        logger.warning("count_flops: no FLOP rule for %s; counted as 0", names)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print parameters and FLOPs of registered backbones."""
    parser = argparse.ArgumentParser(
        prog="python -m backbones.complexity",
        description="Parameters and FLOPs of backbones (112x112 input). GMACs is insightface's "
        "'GFLOPs' column; 2xGMACs is the ElasticFace/ContraFace FLOPs convention.",
    )
    parser.add_argument(
        "names", nargs="+", metavar="NAME", help=f"one of: {', '.join(list_backbones())}"
    )
    parser.add_argument("--num-features", type=int, default=512, help="embedding size (512)")
    parser.add_argument("--use-se", action="store_true", help="iresnet with SE blocks")
    parser.add_argument("--width", type=int, default=None, help="iresnet / IR first-stage width (64)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # The iresnet options not given are None, which get_backbone leaves out: mobilefacenet names
    # work without them (and the IR names without use_se, which their names fix).
    extra = {"use_se": True if args.use_se else None, "width": args.width}
    print(f"{'backbone':<20} {'Mparams':>9} {'GMACs':>8} {'2xGMACs':>8} {'reference GMACs':>16}")
    for name in args.names:
        try:
            # On the meta device: shapes only, so even iresnet200 is counted instantly.
            with torch.device("meta"):
                model = get_backbone(name, num_features=args.num_features, **extra)
        except TypeError as e:
            parser.error(f"{name}: {e} (--use-se applies to iresnet only, --width to iresnet and IR)")
        except ValueError as e:
            parser.error(str(e))
        params = count_parameters(model) / 1e6
        gmacs = count_flops(model) / 1e9
        # Aliases ("r50") share the builder of the canonical name the reference is keyed by.
        plain = not args.use_se and args.width is None and args.num_features == 512
        ref = REFERENCE_GMACS.get(BACKBONES[name].__name__) if plain else None
        ref_s = f"{ref:.1f} ({gmacs / ref:.3f}x)" if ref else "-"
        print(f"{name:<20} {params:>9.3f} {gmacs:>8.3f} {2 * gmacs:>8.3f} {ref_s:>16}")
    return 0


if __name__ == "__main__":
    run_cli(main)
