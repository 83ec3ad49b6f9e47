"""seganypet: promptable 3D segmentation of whole-body PET.

The public names are imported lazily so that ``import seganypet`` (and the CLI's start-up) stays fast
and does not import torch until a model is needed.

- :func:`read_pet` -> :class:`PETImage` (``seganypet.io``)
- :func:`load_model` (``seganypet.build``)
- :class:`Session` (``seganypet.inference``)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "PETImage": "seganypet.image",
    "read_pet": "seganypet.io",
    "write_label_map": "seganypet.io",
    "load_model": "seganypet.build",
    "save_model": "seganypet.build",
    "Session": "seganypet.inference",
    "compute_stats": "seganypet.quant",
}

__all__ = [
    "__version__",
    "PETImage",
    "read_pet",
    "write_label_map",
    "load_model",
    "save_model",
    "Session",
    "compute_stats",
]

if TYPE_CHECKING:  # pragma: no cover
    from seganypet.build import load_model, save_model
    from seganypet.image import PETImage
    from seganypet.inference import Session
    from seganypet.io import read_pet, write_label_map
    from seganypet.quant import compute_stats


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'seganypet' has no attribute {name!r}")
