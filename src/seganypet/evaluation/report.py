"""Tables (CSV, Markdown) and figures of an evaluation run.

Files written into ``OUTDIR`` (each atomically):

- ``objects.csv``: one row per method, case, object and click (SAM-Med3D protocol).
- ``cases.csv``: lesion measures per method, case and click / step (when there are lesions).
- ``autopet.csv``: AUC and final Dice/FPV/FNV per method and case (autoPET protocol).
- ``summary.md``: mean, median and 95 % bootstrap CI (2000 resamples of the objects or cases,
  seed 0) per method and click count.
- ``run.json``: the configuration, the data, the models and the file list.
- ``plots/dice_vs_clicks.png``, ``plots/dice_by_kind.png``, ``overlays/<case>.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seganypet import __version__
from seganypet.evaluation import plots
from seganypet.evaluation.metrics import bootstrap_ci
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.evaluation.report")


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Rows (dicts) -> CSV with the union of keys as columns (first row's order first)."""
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(float(x))], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "lo": float("nan"), "hi": float("nan")}
    lo, hi = bootstrap_ci(v)
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)), "lo": lo, "hi": hi}


def _mean_ci(values: Sequence[float], digits: int = 3) -> str:
    s = _stats(values)
    return f"{_fmt(s['mean'], digits)} [{_fmt(s['lo'], digits)}, {_fmt(s['hi'], digits)}]"


def summary_tables(
    cfg: Any,
    methods: Sequence[str],
    obj_rows: Sequence[dict],
    case_rows: Sequence[dict],
    ap_rows: Sequence[dict],
) -> str:
    """The Markdown tables of ``summary.md`` (without the header)."""
    out: list[str] = []
    if obj_rows:
        tol = f"{cfg.tolerance_mm:g}"
        out += [
            "## Per object (SAM-Med3D protocol)",
            "",
            "Dice, NSD and relative volume error: mean [95 % bootstrap CI] and median over objects; "
            "HD95 (mm): median.",
            "",
            f"| method | clicks | objects | Dice mean [95% CI] | Dice median | NSD@{tol}mm mean | "
            "HD95 median (mm) | vol. error median (%) |",
            "|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for m in methods:
            sel = [r for r in obj_rows if r["method"] == m]
            for n in sorted({int(r["n"]) for r in sel}):
                rs = [r for r in sel if int(r["n"]) == n]
                d = _stats([r["dice"] for r in rs])
                out.append(
                    f"| {m} | {n} | {d['n']} | {_mean_ci([r['dice'] for r in rs])} | {_fmt(d['median'])} | "
                    f"{_fmt(_stats([r['nsd'] for r in rs])['mean'])} | "
                    f"{_fmt(_stats([r['hd95_mm'] for r in rs])['median'], 1)} | "
                    f"{_fmt(100 * _stats([r['vol_err_rel'] for r in rs])['median'], 1)} |"
                )
        last = max(int(r["n"]) for r in obj_rows)
        kinds = sorted({r["kind"] for r in obj_rows})
        out += [
            "",
            f"### By object kind, after {last} click(s)",
            "",
            "| method | kind | objects | Dice mean [95% CI] | Dice median |",
            "|---|---|---:|---|---:|",
        ]
        for m in methods:
            for kind in kinds:
                rs = [r for r in obj_rows if r["method"] == m and r["kind"] == kind and int(r["n"]) == last]
                if rs:
                    d = _stats([r["dice"] for r in rs])
                    ci = _mean_ci([r["dice"] for r in rs])
                    out.append(f"| {m} | {kind} | {d['n']} | {ci} | {_fmt(d['median'])} |")
        out.append("")
    if case_rows:
        step = "step" if cfg.protocol == "autopet" else "clicks per lesion"
        out += [
            "## Per case, all lesions together (autoPET measures)",
            "",
            "Dice, false-positive and false-negative volume (mL): mean [95 % bootstrap CI] over cases; "
            "detection: lesion components summed over cases (18-connectivity).",
            "",
            f"| method | {step} | cases | Dice | FPV (mL) | FNV (mL) | TP | FN | FP |",
            "|---|---:|---:|---|---|---|---:|---:|---:|",
        ]
        for m in methods:
            sel = [r for r in case_rows if r["method"] == m]
            for n in sorted({int(r["n"]) for r in sel}):
                rs = [r for r in sel if int(r["n"]) == n]
                out.append(
                    f"| {m} | {n} | {len(rs)} | {_mean_ci([r['dice'] for r in rs])} | "
                    f"{_mean_ci([r['fpv_ml'] for r in rs], 2)} | {_mean_ci([r['fnv_ml'] for r in rs], 2)} | "
                    f"{sum(int(r['tp']) for r in rs)} | {sum(int(r['fn']) for r in rs)} | "
                    f"{sum(int(r['fp']) for r in rs)} |"
                )
        out.append("")
    if ap_rows:
        out += [
            "## autoPET IV interactive metrics",
            "",
            f"AUC by the trapezoid rule over steps 0..{cfg.clicks}; final = after {cfg.clicks} tumour and "
            f"{cfg.clicks} background clicks. Mean [95 % bootstrap CI] over cases.",
            "",
            "| method | cases | Dice AUC | FPV AUC (mL) | FNV AUC (mL) | Dice final | FPV final (mL) "
            "| FNV final (mL) |",
            "|---|---:|---|---|---|---|---|---|",
        ]
        for m in methods:
            rs = [r for r in ap_rows if r["method"] == m]
            if rs:
                cells = [
                    _mean_ci([r[c] for r in rs], 3 if c.startswith("dice") else 2)
                    for c in ("dice_auc", "fpv_auc", "fnv_auc", "dice_final", "fpv_final", "fnv_final")
                ]
                out.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_outputs(
    outdir: Path,
    cfg: Any,
    methods: Sequence[str],
    obj_rows: list[dict],
    case_rows: list[dict],
    ap_rows: list[dict],
    overlay_cases: Sequence[Any],
    loaded: dict[str, Any],
    run_info: dict[str, Any],
) -> dict[str, Path]:
    """Write every table and figure (see the module docstring); returns ``{name: path}``."""
    from seganypet.evaluation.datasets import load_case
    from seganypet.evaluation.runner import load_final_mask

    outdir = Path(outdir)
    files: dict[str, Path] = {}
    if obj_rows:
        files["objects.csv"] = write_csv(obj_rows, outdir / "objects.csv")
    if case_rows:
        files["cases.csv"] = write_csv(case_rows, outdir / "cases.csv")
    if ap_rows:
        files["autopet.csv"] = write_csv(ap_rows, outdir / "autopet.csv")
    n_cases = len({r["case"] for r in [*obj_rows, *case_rows]})
    header = [
        f"# Evaluation: {cfg.protocol} protocol",
        "",
        f"seganypet {__version__}; {n_cases} case(s); methods: {', '.join(methods)}; "
        f"clicks: {cfg.clicks}; labels: {cfg.labels}; seed: {cfg.seed}; click mode: {cfg.click_mode}; "
        f"NSD tolerance: {cfg.tolerance_mm:g} mm.",
        "",
        "Data: " + ", ".join(f"`{d}`" for d in run_info.get("data", [])),
        "",
    ]
    text = "\n".join(header) + "\n" + summary_tables(cfg, methods, obj_rows, case_rows, ap_rows)
    with atomic_path(outdir / "summary.md") as tmp:
        tmp.write_text(text + "\n")
    files["summary.md"] = outdir / "summary.md"

    pdir = outdir / "plots"
    if obj_rows:
        curve_rows, xlabel = obj_rows, "clicks per object"
        last = max(int(r["n"]) for r in obj_rows)
        box_rows = [r for r in obj_rows if int(r["n"]) == last]
    else:
        curve_rows, xlabel = case_rows, "autoPET step (tumour + background clicks)"
        box_rows = [
            {"method": r["method"], "kind": "lesions (final step)", "dice": r["dice_final"]} for r in ap_rows
        ]
    if curve_rows:
        files["plots/dice_vs_clicks.png"] = plots.dice_vs_clicks(
            curve_rows, methods, pdir / "dice_vs_clicks.png", xlabel, f"{cfg.protocol} protocol"
        )
    if box_rows:
        files["plots/dice_by_kind.png"] = plots.box_by_kind(
            box_rows, methods, pdir / "dice_by_kind.png", "Dice at the last click"
        )
    for spec in overlay_cases:
        case = loaded.get(spec.case_id) or load_case(spec, cfg.labels)
        preds = {}
        for m in methods:
            mask = load_final_mask(outdir, m, spec.case_id)
            if mask is not None and mask.shape == case.image.shape:
                preds[m] = mask
        ref = case.lesion_reference()  # lesions when there are any (as the cached final masks)
        if not ref.any():
            for obj in case.objects:
                ref |= obj.mask
        name = f"overlays/{spec.case_id}.png"
        files[name] = plots.overlay(
            case.image.array, case.image.affine, ref, preds, outdir / name, f"{spec.case_id} ({cfg.protocol})"
        )
    run = {
        "seganypet": __version__,
        "config": cfg.key(),
        **run_info,
        "methods": list(methods),
        "files": sorted(files),
    }
    with atomic_path(outdir / "run.json") as tmp:
        tmp.write_text(json.dumps(run, indent=1))
    files["run.json"] = outdir / "run.json"
    return files
