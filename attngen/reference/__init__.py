"""The reference interpreter: checked IR evaluated eagerly in torch (see interpreter.py)."""

from .api import ReferenceAttention
from .interpreter import reference_attention, selected_pairs
from .masks import mask_grid

__all__ = ["ReferenceAttention", "reference_attention", "selected_pairs", "mask_grid"]
