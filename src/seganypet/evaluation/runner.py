"""Running a protocol over cases and methods, with a per-case cache.

:func:`evaluate` is the Python API behind ``seganypet evaluate``. For every case and method it runs
the protocol (:func:`run_sammed3d` or :func:`run_autopet`) and stores the result as JSON in
``OUTDIR/cache/<method>/<case>.json`` (with the final prediction in ``<case>.npz`` for the overlay
figures). A cached result is reused only when its configuration (protocol, clicks, seed, labels,
click mode, tolerance) and the method's fingerprint (checkpoint sha256) match, so an interrupted run
resumes where it stopped and a retrained model is re-evaluated.

Result rows (all JSON-able):

- object rows (SAM-Med3D protocol): case, method, object key/label/name/kind, click number ``n``
  (1..N), the click ``i,j,k,positive``, and :func:`~seganypet.evaluation.metrics.object_metrics`.
- case rows (both protocols, when the case has lesions): case, method, ``n`` (clicks per object, or
  the autoPET step 0..10) and :func:`~seganypet.evaluation.metrics.lesion_measures` of all lesion
  predictions together against all lesion references.
- autoPET rows: case, method, AUC (trapezoid over steps 0..10) and final value of Dice, FPV, FNV.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.evaluation import clicks as clk
from seganypet.evaluation.datasets import (
    CaseSpec,
    EvalCase,
    case_summary,
    find_cases,
    load_case,
    parse_label_filter,
)
from seganypet.evaluation.engines import ENGINE_NAMES, Engine, make_engine
from seganypet.evaluation.metrics import lesion_measures, object_metrics, trapezoid_auc
from seganypet.utils import atomic_path, progress

logger = logging.getLogger("seganypet.evaluation.runner")

PROTOCOLS = ("sammed3d", "autopet")
CACHE_VERSION = 1


@dataclass
class EvalConfig:
    """What a run measures. ``clicks``: clicks per object (SAM-Med3D) or the click budget (autoPET,
    10 in the challenge, giving steps 0..10). ``tolerance_mm``: NSD tolerance."""

    protocol: str = "sammed3d"
    clicks: int = 5
    labels: str = "all"
    seed: int = 0
    click_mode: str = "random"
    tolerance_mm: float = 5.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
        if int(self.clicks) < 1:
            raise InputError(f"--clicks must be at least 1, got {self.clicks}.")
        if self.click_mode not in clk.CLICK_MODES:
            raise InputError(
                f"unknown click mode {self.click_mode!r}; choose {' or '.join(clk.CLICK_MODES)}."
            )
        parse_label_filter(self.labels)  # raises InputError on a bad selection
        if not self.tolerance_mm > 0:
            raise InputError(f"the NSD tolerance must be positive, got {self.tolerance_mm} mm.")

    def key(self) -> dict[str, Any]:
        """The cache key: the settings plus a hash of the protocol and metric code."""
        return {"version": CACHE_VERSION, "code": _code_hash(), **asdict(self)}


def _code_hash() -> str:
    h = hashlib.sha256()
    for name in ("clicks.py", "metrics.py", "runner.py"):
        h.update(Path(__file__).with_name(name).read_bytes())
    return h.hexdigest()[:16]


def _metrics_row(pred: np.ndarray, ref: np.ndarray, spacing: Any, tol: float) -> dict[str, float]:
    return {
        k: (round(v, 6) if isinstance(v, float) else v)
        for k, v in object_metrics(pred, ref, spacing, tol).items()
    }


def run_sammed3d(case: EvalCase, engine: Engine, cfg: EvalConfig) -> dict[str, Any]:
    """SAM-Med3D protocol on one case: every selected object on its own, ``cfg.clicks`` clicks each.

    Returns ``{"objects": [rows], "cases": [rows], "final": bool (I,J,K)}``: the union of the final
    masks of the lesion objects, or of all objects when the case has no lesion.
    """
    spacing = case.image.spacing
    rows: list[dict[str, Any]] = []
    lesion_ref = case.lesion_reference()
    has_lesions = bool(lesion_ref.any())
    lesion_preds = [np.zeros(case.image.shape, dtype=bool) for _ in range(cfg.clicks)]
    final = np.zeros(case.image.shape, dtype=bool)
    for obj in case.objects:
        engine.clear()
        rng = clk.rng_for(cfg.seed, case.case_id, obj.key)  # same stream for every method
        click: clk.Click | None = clk.first_click(obj.mask, rng)
        pred = np.zeros(case.image.shape, dtype=bool)
        for n in range(1, cfg.clicks + 1):
            t0 = time.perf_counter()
            if click is not None:  # None: the prediction is already perfect; nothing left to click
                pred = engine.click("obj", click[0], click[1])
            seconds = time.perf_counter() - t0
            row = {
                "case": case.case_id,
                "method": engine.name,
                "object": obj.key,
                "label": obj.label,
                "name": obj.name,
                "kind": obj.kind,
                "n": n,
                "i": None if click is None else click[0][0],
                "j": None if click is None else click[0][1],
                "k": None if click is None else click[0][2],
                "positive": None if click is None else bool(click[1]),
                "seconds": round(seconds, 4),
                **_metrics_row(pred, obj.mask, spacing, cfg.tolerance_mm),
            }
            rows.append(row)
            if obj.kind == "lesion":
                lesion_preds[n - 1] |= pred
            if n < cfg.clicks and click is not None:
                click = clk.next_click(pred, obj.mask, rng, cfg.click_mode, spacing)
        final |= pred
    case_rows = []
    if has_lesions:
        for n, lp in enumerate(lesion_preds, start=1):
            m = lesion_measures(lp, lesion_ref, spacing)
            case_rows.append({"case": case.case_id, "method": engine.name, "n": n, **_round(m)})
    # the overlay figures show the lesions when there are any (organs would hide them)
    return {"objects": rows, "cases": case_rows, "final": lesion_preds[-1] if has_lesions else final}


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def run_autopet(case: EvalCase, engine: Engine, cfg: EvalConfig) -> dict[str, Any]:
    """autoPET IV protocol on one case (all lesion objects together as the reference).

    Step 0 has no clicks; our engines are click-driven, so its prediction is empty. At step s the
    s-th tumour click goes to the object of its reference component (a new object on the first click
    of a component: the simulated user knows which lesion it clicks), and the s-th background click
    is a negative click on the most recent object whose current mask contains it; a background click
    outside every predicted object changes nothing and is recorded as ``ignored``.
    """
    spacing = case.image.spacing
    ref = case.lesion_reference()
    if not ref.any():
        return {
            "objects": [],
            "cases": [],
            "autopet": [],
            "final": np.zeros(ref.shape, dtype=bool),
            "clicks": {},
        }
    rng = clk.rng_for(cfg.seed, case.case_id, "autopet")
    sim = clk.autopet_clicks(ref, case.image.array, rng, budget=cfg.clicks)
    engine.clear()
    rows = []
    pred = np.zeros(ref.shape, dtype=bool)
    events: list[dict[str, Any]] = []
    for step in range(0, cfg.clicks + 1):
        if step > 0:
            if step <= len(sim["tumor"]):
                ijk = sim["tumor"][step - 1]
                key = f"c{sim['tumor_component'][step - 1]}"
                engine.click(key, ijk, True)
                events.append({"step": step, "ijk": list(ijk), "positive": True, "object": key})
            if step <= len(sim["background"]):
                ijk = sim["background"][step - 1]
                owner = next((k for k in reversed(engine.keys()) if engine.mask(k)[ijk]), None)
                if owner is not None:
                    engine.click(owner, ijk, False)
                events.append(
                    {"step": step, "ijk": list(ijk), "positive": False, "object": owner or "ignored"}
                )
            pred = engine.union()
        m = lesion_measures(pred, ref, spacing)
        rows.append({"case": case.case_id, "method": engine.name, "n": step, **_round(m)})
    summary = {"case": case.case_id, "method": engine.name}
    for metric, col in (("dice", "dice"), ("fpv", "fpv_ml"), ("fnv", "fnv_ml")):
        values = [r[col] for r in rows]
        summary[f"{metric}_auc"] = round(trapezoid_auc(values), 6)
        summary[f"{metric}_final"] = values[-1]
    return {
        "objects": [],
        "cases": rows,
        "autopet": [summary],
        "final": pred,
        "clicks": {"events": events, **sim},
    }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def _cache_paths(outdir: Path, method: str, case_id: str) -> tuple[Path, Path]:
    d = outdir / "cache" / _slug(method)
    return d / f"{case_id}.json", d / f"{case_id}.npz"


def _load_cached(outdir: Path, engine: Engine, case_id: str, cfg: EvalConfig) -> dict[str, Any] | None:
    js, npz = _cache_paths(outdir, engine.name, case_id)
    if not js.is_file() or not npz.is_file():
        return None
    try:
        data = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("config") != cfg.key() or data.get("fingerprint") != engine.fingerprint:
        return None
    return data


def _save_cached(
    outdir: Path, engine: Engine, case: EvalCase, cfg: EvalConfig, result: dict[str, Any]
) -> None:
    js, npz = _cache_paths(outdir, engine.name, case.case_id)
    final = result.pop("final")
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, final=np.packbits(final.ravel()), shape=np.asarray(final.shape))
    payload = {"config": cfg.key(), "fingerprint": engine.fingerprint, "info": case_summary(case), **result}
    with atomic_path(js) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.bool_):
        return o.item()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, tuple | np.ndarray):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def load_final_mask(outdir: Path, method: str, case_id: str) -> np.ndarray | None:
    """The cached final prediction (bool ``(I, J, K)``) of a method on a case, or ``None``."""
    _, npz = _cache_paths(Path(outdir), method, case_id)
    if not npz.is_file():
        return None
    with np.load(npz) as z:
        shape = tuple(int(v) for v in z["shape"])
        return np.unpackbits(z["final"], count=int(np.prod(shape))).astype(bool).reshape(shape)


def evaluate(
    data: list[str | Path],
    models: list[Any],
    outdir: str | Path,
    cfg: EvalConfig,
    cases: list[str] | None = None,
    device: str = "cpu",
    radius_mm: float | None = None,
    overlays: int = 3,
    large_objects: Sequence[str] = ("extend",),
) -> dict[str, Any]:
    """Run ``cfg`` for every model on every case, then write the tables and plots into ``outdir``.

    Args:
        data: dataset folders and/or manifest files (:func:`seganypet.evaluation.datasets.find_cases`).
        models: ``--model`` values (baselines ``threshold-2.5``, ``threshold-41``, ``percist``;
            ``default``; a checkpoint path; a model name) or loaded model modules.
        outdir: output folder (created); ``outdir/cache`` holds the per-case results.
        cases: fnmatch patterns of case ids to keep.
        overlays: number of cases that get an overlay figure.
        large_objects: session strategies for objects larger than one crop; every model (not the
            baselines) is evaluated with each (named ``model+zoom`` etc. when not ``"extend"``).

    Returns:
        ``{"files": {name: path}, "objects": rows, "cases": rows, "autopet": rows}``.
    """
    from seganypet.evaluation.report import write_outputs

    if not models:
        raise InputError("name at least one --model (a model, or a baseline such as threshold-41).")
    if len({m if isinstance(m, str) else id(m) for m in models}) != len(models):
        raise InputError("the same --model is named twice.")
    outdir = Path(outdir)
    specs: list[CaseSpec] = find_cases(data, cases)
    pairs = [
        (m, lo)
        for m in models
        for lo in (["extend"] if isinstance(m, str) and m in ENGINE_NAMES else list(large_objects))
    ]
    engines = [make_engine(m, device=device, radius_mm=radius_mm, large_objects=lo) for m, lo in pairs]
    names = [e.name for e in engines]
    if len(set(names)) != len(names):
        raise InputError(f"two models have the same name ({', '.join(names)}); rename a checkpoint file.")
    if any(e.name == "percist" for e in engines):
        logger.info("percist needs a liver object in every case")
    runner = run_sammed3d if cfg.protocol == "sammed3d" else run_autopet
    all_obj: list[dict] = []
    all_case: list[dict] = []
    all_ap: list[dict] = []
    loaded: dict[str, EvalCase] = {}
    for spec in progress(specs, desc="evaluate", unit="case"):
        case = None
        for engine in engines:
            result = _load_cached(outdir, engine, spec.case_id, cfg)
            if result is None:
                if case is None:
                    case = load_case(spec, cfg.labels)
                    if not case.objects:
                        logger.warning(
                            "%s: no reference object matches --labels %s", spec.case_id, cfg.labels
                        )
                if engine.name == "percist" and case.liver_mask is None:
                    raise InputError(
                        f"case {spec.case_id}: the percist baseline needs a liver label, and it has none."
                    )
                engine.set_image(case.image, case.liver_mask)
                logger.info("%s: %s", spec.case_id, engine.name)
                result = runner(case, engine, cfg)
                _save_cached(outdir, engine, case, cfg, result)
            all_obj.extend(result.get("objects", []))
            all_case.extend(result.get("cases", []))
            all_ap.extend(result.get("autopet", []))
        if case is not None and len(loaded) < overlays:
            loaded[spec.case_id] = case
    files = write_outputs(
        outdir,
        cfg,
        [e.name for e in engines],
        all_obj,
        all_case,
        all_ap,
        overlay_cases=[s for s in specs[:overlays]],
        loaded=loaded,
        run_info={
            "data": [str(d) for d in data],
            "models": [m if isinstance(m, str) else e.name for (m, _), e in zip(pairs, engines)],
            "large_objects": list(large_objects),
            "fingerprints": {e.name: e.fingerprint for e in engines},
            "device": device,
            "radius_mm": radius_mm,
        },
    )
    return {"files": files, "objects": all_obj, "cases": all_case, "autopet": all_ap}
