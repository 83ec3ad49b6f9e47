"""``seganypet stats``: per-object and per-patient PET statistics of a label map.

Also home of :func:`read_label_map`, shared by ``seganypet report``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import ImageReadError, InputError
from seganypet.image import PETImage

HELP = "SUVmax, SUVmean, SUVpeak, MTV and TLG of each object of a label map (CSV/JSON, table, report)"
logger = logging.getLogger("seganypet.commands.stats")


def sidecar_path(path: str | Path) -> Path:
    """``labels.nii.gz`` -> ``labels.json`` (the side-car with the label names)."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr"):
        if name.lower().endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(path: str | Path) -> tuple[dict[int, str], dict[int, str]]:
    """Label names and kinds from the side-car JSON of a label map (empty dicts when there is none).

    Accepted formats: ``{"labels": {"1": "liver", ...}}`` (the project's format),
    ``{"labels": {"1": {"name": "liver", "kind": "organ"}}}``, ``{"labels": [{"label": 1, "name": ...}]}``
    and a bare ``{"1": "liver"}``.
    """
    side = sidecar_path(path)
    if not side.is_file():
        return {}, {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"the label side-car {side} is not valid JSON ({err})") from None
    entries: Any = data.get("labels", data) if isinstance(data, dict) else data
    if isinstance(entries, list):
        entries = {e.get("label", e.get("value")): e for e in entries if isinstance(e, dict)}
    if not isinstance(entries, dict):
        raise InputError(f"the label side-car {side} has no 'labels' mapping of label -> name")
    names: dict[int, str] = {}
    kinds: dict[int, str] = {}
    for key, value in entries.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            continue  # other keys of a bare mapping (e.g. "version")
        if isinstance(value, dict):
            if "name" in value:
                names[label] = str(value["name"])
            if "kind" in value:
                kinds[label] = str(value["kind"])
        elif isinstance(value, str):
            names[label] = value
    return names, kinds


def _read_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (I, J, K), affine RAS mm) of a NIfTI, MHA/MHD or NRRD label map."""
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    lin = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = lin, img.GetOrigin()
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff  # LPS -> RAS


def read_label_map(
    path: str | Path, reference: PETImage
) -> tuple[np.ndarray, dict[int, str], dict[int, str]]:
    """Read a label map that must lie on ``reference``'s grid.

    Returns:
        (labels int32 (I, J, K), names, kinds); names/kinds from the side-car ``<stem>.json``.

    Raises:
        ImageReadError: missing/unreadable file.
        InputError: not 3D, non-integer or negative values, or a grid (shape or affine, within 1 % of
            the smallest voxel size) other than the PET's.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"the label map {p} does not exist")
    try:
        arr, affine = _read_array(p)
        arr = np.asarray(arr)
    except Exception as err:  # nibabel/SimpleITK raise many types for a bad file
        raise ImageReadError(f"cannot read the label map {p}: {err}") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"the label map {p} has {arr.ndim} dimensions; a 3D label map is needed")
    if arr.shape != reference.shape:
        raise InputError(
            f"the label map {p} has shape {arr.shape} but the PET has shape {reference.shape}: "
            "the label map must be on the PET's own grid"
        )
    tol = 0.01 * min(reference.spacing)
    diff = float(np.abs(affine - reference.affine).max())
    if diff > tol:
        raise InputError(
            f"the label map {p} is not on the PET's grid: its voxel-to-mm affine differs from the "
            f"PET's by up to {diff:.3g} mm (tolerance {tol:.3g} mm)"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"the label map {p} holds non-integer values; it must hold integer labels")
    if arr.size and arr.min() < 0:
        raise InputError(f"the label map {p} holds negative values; labels are 0 (background) or positive")
    names, kinds = read_sidecar(p)
    return arr.astype(np.int32), names, kinds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--image", required=True, help="PET image (NIfTI, MHA/NRRD, DICOM folder/zip)")
    parser.add_argument(
        "-m", "--labels", required=True, help="label map on the PET's grid (NIfTI; names from <stem>.json)"
    )
    parser.add_argument(
        "--components", action="store_true", help="one row per 18-connected component of each label"
    )
    parser.add_argument("-o", "--output", help="write the statistics to this .csv or .json file")
    parser.add_argument("--report", metavar="PNG", help="also write the MIP report picture")
    parser.add_argument("--html", metavar="HTML", help="also write the HTML report page")
    parser.add_argument("--suv-max", type=float, default=None, help="report window maximum (default 5 SUV)")
    add_read_options(parser)


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """``--suv`` and ``--units``, passed to :func:`seganypet.io.read_pet`."""
    parser.add_argument(
        "--suv", default=None, help="SUV for DICOM input: bw (default), lbm, bsa, or none (stored units)"
    )
    parser.add_argument(
        "--units", default=None, help="what a NIfTI/MHA input holds: SUVbw (default), SUVlbm, SUVbsa, Bq/mL"
    )


def load_inputs(args: argparse.Namespace) -> tuple[PETImage, np.ndarray, dict[int, str], dict[int, str]]:
    """Read ``args.image`` with :func:`seganypet.io.read_pet` and ``args.labels`` on its grid."""
    from seganypet.io import read_pet

    image = read_pet(args.image, suv=getattr(args, "suv", None), units=getattr(args, "units", None))
    labels, names, kinds = read_label_map(args.labels, image)
    return image, labels, names, kinds


def run(args: argparse.Namespace) -> int:
    from seganypet.quant import compute_stats, write_stats
    from seganypet.report import format_table

    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise InputError(f"the output {args.output} must end in .csv or .json")
    if args.suv_max is not None and not args.suv_max > 0:
        raise InputError(f"--suv-max must be positive, got {args.suv_max}")
    image, labels, names, kinds = load_inputs(args)
    stats = compute_stats(image, labels, names, components=args.components, kinds=kinds)
    print(format_table(stats))
    if args.output:
        write_stats(stats, args.output)
        print(f"statistics written to {args.output}")
    if args.report or args.html:
        from seganypet.report import write_report

        png = args.report or str(Path(args.html).with_suffix(".png"))
        write_report(image, labels, names, png, html=args.html, suv_max=args.suv_max, stats=stats)
        print(f"report written to {png}" + (f" and {args.html}" if args.html else ""))
    return 0
