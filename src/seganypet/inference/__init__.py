"""Interactive inference: :class:`Session` (clicks in, masks on the input grid out).

- :mod:`seganypet.inference.session`: the Session API, undo/redo, journal, overlap policy.
- :mod:`seganypet.inference.engine`: crops on the 1.5 mm model grid, embedding cache, paste-back.
- :mod:`seganypet.inference.extension`: extra windows for objects larger than one crop.
- :mod:`seganypet.inference.prompts`: the ``prompts.json`` format of ``seganypet segment``.
"""

from seganypet.inference.session import Session

__all__ = ["Session"]
