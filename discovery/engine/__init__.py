"""The one forward engine: every scorer runs on :class:`Engine` (see :mod:`discovery.engine.core`).

:mod:`discovery.engine.architectures` declares how architectures differ (flags) and which have the
engine's fast path; the others are scored through TransformerLens hooks (:mod:`discovery.scoring.hooked`).
"""

from discovery.engine.architectures import FAST_PATH, ArchitectureFlags, flags_for, has_fast_path
from discovery.engine.core import Engine, LayerWeights, Recording, record_forward

__all__ = [
    "FAST_PATH",
    "ArchitectureFlags",
    "Engine",
    "LayerWeights",
    "Recording",
    "flags_for",
    "has_fast_path",
    "record_forward",
]
