"""Evaluation: metrics, simulated-user click protocols, classical baselines, reports.

- :mod:`.metrics`: Dice, NSD, HD95, volume error, autoPET lesion measures (FPV, FNV, detection).
- :mod:`.clicks`: SAM-Med3D and autoPET IV click protocols.
- :mod:`.baselines`: :func:`segment_at_click` and the Session-like :class:`ThresholdEngine`.
- :mod:`.runner`: :func:`evaluate` (the API behind ``seganypet evaluate``), with a per-case cache.
- :mod:`.report`, :mod:`.plots`: CSV / Markdown tables and PNG figures.
"""

from __future__ import annotations

from seganypet.evaluation.baselines import ThresholdEngine, make_baseline_engine, segment_at_click

__all__ = ["ThresholdEngine", "make_baseline_engine", "segment_at_click"]
