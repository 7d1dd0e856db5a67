"""Margin heads, the ContraFace loss and the training methods built from them."""

from losses.contraface import ContraFace
from losses.heads import HEADS, ArcFace, CosFace, MarginHead, get_head
from losses.methods import METHODS, ContraFaceTraining, SingleBranch, build_method
from losses.unimoco import UniMoCo, UnifiedContrastive
from losses.partial_fc import PartialFC

__all__ = [
    "HEADS",
    "METHODS",
    "ArcFace",
    "ContraFace",
    "ContraFaceTraining",
    "CosFace",
    "MarginHead",
    "PartialFC",
    "SingleBranch",
    "UniMoCo",
    "UnifiedContrastive",
    "build_method",
    "get_head",
]
