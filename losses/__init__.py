"""Losses only: the margin heads, the ContraFace loss, Partial FC and UniMoCo's unified loss.

The training methods that combine them with a backbone live in ``methods/``.
"""

from losses.contraface import ContraFace
from losses.heads import HEADS, ArcFace, CosFace, MarginHead, get_head
from losses.partial_fc import PartialFC
from losses.unimoco import UnifiedContrastive

__all__ = [
    "HEADS",
    "ArcFace",
    "ContraFace",
    "CosFace",
    "MarginHead",
    "PartialFC",
    "UnifiedContrastive",
    "get_head",
]
