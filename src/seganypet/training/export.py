"""Export a training run's weights as a shippable model file (how ``seganypet/weights/default.pt`` is made).

``export_run(RUN, OUT.pt, half=True, notes={...})`` reads ``RUN/checkpoint.pt``, casts the weights to
float16 (half the size; :func:`seganypet.build.load_model` casts back to float32; relative output
change ~2e-4), and writes ``OUT.pt`` with :func:`seganypet.build.save_model` plus ``OUT.json`` (the
same metadata, human-readable): training command, store, cases, steps, wall time, date, validation
history and any ``notes``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from seganypet.errors import CheckpointError
from seganypet.utils import atomic_path


def export_run(
    run: str | Path, out: str | Path, half: bool = True, notes: dict[str, Any] | None = None
) -> Path:
    """Write the weights of ``run/checkpoint.pt`` to ``out`` (and its metadata to ``out``.json)."""
    from seganypet.build import build_model, save_model

    run, out = Path(run), Path(out)
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} is missing: nothing to export.")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = state["train_config"]
    model = build_model(state["model_config"])
    model.load_state_dict(state["model_state_dict"])
    if cfg["interaction"].get("box_prob", 0) > 0 and not model.config.supports_boxes:
        model.config = model.config.replace(supports_boxes=True)
    if half:
        model = model.half()
    val_rows: list[dict[str, str]] = []
    if (run / "val.csv").is_file():
        with open(run / "val.csv", newline="") as f:
            val_rows = list(csv.DictReader(f))
    store_manifest = Path(cfg["store"]) / "manifest.json"
    split: dict[str, list[str]] = {}
    if store_manifest.is_file():
        split = json.loads(store_manifest.read_text()).get("split", {})
    meta = {
        "command": cfg.get("metadata", {}).get("command", ""),
        "training": {
            "steps": int(state["step"]),
            "wall_time_s": round(float(state.get("elapsed_s", 0.0)), 1),
            "store": cfg["store"],
            "train_cases": split.get("train", []),
            "val_cases": split.get("val", []),
            "config": cfg,
            "validation": val_rows,
            "dtype": "float16" if half else "float32",
        },
        **(notes or {}),
    }
    save_model(model, out, metadata=meta)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"config": model.config.to_dict(), "metadata": meta}, indent=1) + "\n")
    return out
