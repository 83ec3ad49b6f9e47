"""Visual report: coronal and sagittal MIPs with object contours, a table, and an HTML page.

The picture is drawn in the patient's frame: the image is reoriented (by axis permutation and flips
only, :func:`nibabel.orientations.io_orientation`) to the closest RAS+ orientation, so

- coronal MIP = maximum along anterior-posterior; head up, patient right on the image's LEFT
  (radiological convention);
- sagittal MIP = maximum along left-right; head up, anterior on the image's left;
- both drawn in millimetres with ``aspect="equal"``, so anisotropic voxels keep the true physical
  aspect ratio; grey scale inverted (high uptake dark), window 0..``suv_max``;
- each object's contour is the outline of its projected mask (the union of the object along the
  projection axis), in the object's own colour, matching the table and the HTML page.

Uses matplotlib's object API (``Figure`` + Agg canvas), no pyplot state.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seganypet.errors import InputError
from seganypet.image import PETImage
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.report")

MAX_TABLE_ROWS = 24  # rows in the PNG table; the HTML holds all of them
MAX_LEGEND = 8
_MARK = {
    "color": "tab:blue",
    "fontsize": 10,
    "bbox": {"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1},
}


def object_colours(labels: list[int]) -> dict[int, str]:
    """Label -> colour (hex): tab10 for up to 10 labels, else a 60-colour cycle (tab20, tab20b, tab20c),
    assigned in increasing label order (the same in the picture, the PNG table and the HTML page)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ordered = sorted(int(v) for v in labels)
    if len(ordered) <= 10:
        palette = [to_hex(c) for c in colormaps["tab10"].colors]
    else:
        palette = [to_hex(c) for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    return {lab: palette[i % len(palette)] for i, lab in enumerate(ordered)}


def default_window(image: PETImage) -> float:
    """Upper end of the display window: 5 for SUV images, else the 99.5th percentile of voxels > 0."""
    if image.is_suv:
        return 5.0
    vals = image.array[np.isfinite(image.array) & (image.array > 0)]
    return float(np.percentile(vals, 99.5)) if vals.size else 1.0


def mip_views(image: PETImage, label_map: np.ndarray) -> list[dict[str, Any]]:
    """Coronal and sagittal MIPs in display order, with the projected masks of every label.

    Returns:
        two dicts (coronal, sagittal) with ``name``; ``mip`` float ``(rows, cols)``: row 0 = most
        superior, column 0 = patient right (coronal) / most anterior (sagittal); ``masks``: label ->
        bool ``(rows, cols)`` projection of that label; ``pixel_mm``: (column width, row height) in mm;
        ``sides``: letters of the left and right image edges.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(image.affine)  # nearest RAS+ by axis permutation/flip (display only)
    arr = np.nan_to_num(apply_orientation(image.array, ornt), nan=0.0)
    lab = apply_orientation(np.asarray(label_map), ornt)
    spacing = np.linalg.norm((image.affine @ inv_ornt_aff(ornt, image.shape))[:3, :3], axis=0)
    labels = [int(v) for v in np.unique(lab) if v != 0]

    def display(a: np.ndarray) -> np.ndarray:  # (horizontal axis, z) -> (rows = z desc, cols = desc)
        return a[::-1, ::-1].T

    views = []
    for name, axis, horiz, sides in (("coronal", 1, 0, ("R", "L")), ("sagittal", 0, 1, ("A", "P"))):
        views.append(
            {
                "name": name,
                "mip": display(arr.max(axis=axis)),
                "masks": {v: display((lab == v).any(axis=axis)) for v in labels},
                "pixel_mm": (float(spacing[horiz]), float(spacing[2])),
                "sides": sides,
            }
        )
    return views


def _fmt(v: Any, f: str = ".2f") -> str:
    return "-" if v is None else format(v, f)


def _table_rows(stats: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in stats["objects"]:
        name = str(r["name"]) + (f" #{r['component']}" if r.get("component") else "")
        rows.append(
            [str(r["label"]), name, _fmt(r["volume_ml"]), _fmt(r["suv_max"]), _fmt(r["suv_mean"]),
             _fmt(r["suv_peak"]), _fmt(r["tlg"], ".1f")]
        )  # fmt: skip
    return rows


def _patient_line(stats: Mapping[str, Any]) -> str:
    p, u = stats["patient"], stats["units"]
    parts = [f"{p['lesion_count']} lesion(s)"]
    if p["lesion_count"]:
        parts.append(f"total MTV {_fmt(p['total_mtv_ml'])} mL, total TLG {_fmt(p['total_tlg'], '.1f')}")
        parts.append(f"lesion max {_fmt(p['suv_max'])} {u}")
    if p.get("liver_mean") is not None:
        parts.append(f"liver {_fmt(p['liver_mean'])} ± {_fmt(p['liver_sd'])}")
        if p.get("suv_max_to_liver") is not None:
            parts.append(f"max/liver {_fmt(p['suv_max_to_liver'])}")
    if p.get("blood_pool_mean") is not None:
        parts.append(f"blood pool {_fmt(p['blood_pool_mean'])} ± {_fmt(p['blood_pool_sd'])}")
    return ", ".join(parts)


def format_table(stats: Mapping[str, Any]) -> str:
    """A plain-text table of the objects and the patient summary (for the terminal)."""

    def num(v: Any, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    units = stats["units"]
    head = ["label", "name", "kind", "voxels", "vol mL", "max", "mean", "peak", "TLG", "max at (i,j,k)"]
    rows = []
    for r in stats["objects"]:
        name = r["name"] + (f" #{r['component']}" if r.get("component") else "")
        ijk = "-" if r["suv_max_ijk"] is None else ",".join(map(str, r["suv_max_ijk"]))
        rows.append(
            [str(r["label"]), name, r["kind"], str(r["voxels"]), num(r["volume_ml"]), num(r["suv_max"]),
             num(r["suv_mean"]), num(r["suv_peak"]), num(r["tlg"], ".1f"), ijk]
        )  # fmt: skip
    widths = [max([len(h)] + [len(row[c]) for row in rows]) for c, h in enumerate(head)]
    lines = [f"units: {units}", "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    if not rows:
        lines.append("(no objects in the label map)")
    p = stats["patient"]
    lines.append(
        f"patient: {p['lesion_count']} lesion(s), total MTV {num(p['total_mtv_ml'])} mL, "
        f"total TLG {num(p['total_tlg'], '.1f')}, lesion max {num(p['suv_max'])} {units}"
    )
    if p["liver_mean"] is not None:
        lines.append(
            f"liver reference: mean {num(p['liver_mean'])} SD {num(p['liver_sd'])}; "
            f"lesion max / liver {num(p['suv_max_to_liver'])}; "
            f"PERCIST threshold {num(p['percist_threshold'])}"
        )
    if p["blood_pool_mean"] is not None:
        lines.append(f"blood pool reference: mean {num(p['blood_pool_mean'])} SD {num(p['blood_pool_sd'])}")
    return "\n".join(lines)


def render_png(
    image: PETImage,
    label_map: np.ndarray,
    stats: Mapping[str, Any],
    *,
    suv_max: float | None = None,
    title: str | None = None,
    dpi: int = 110,
) -> bytes:
    """The report picture as PNG bytes (see the module docstring for the layout)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if np.shape(label_map) != image.shape:
        raise InputError(f"the label map has shape {np.shape(label_map)} but the PET has shape {image.shape}")
    vmax = float(suv_max) if suv_max is not None else default_window(image)
    views = mip_views(image, label_map)
    labels = sorted({int(r["label"]) for r in stats["objects"]})
    colours = object_colours(labels)
    widths = [v["mip"].shape[1] * v["pixel_mm"][0] for v in views]
    ext_z = views[0]["mip"].shape[0] * views[0]["pixel_mm"][1]
    rows = _table_rows(stats)
    shown = rows[:MAX_TABLE_ROWS]
    if len(rows) > len(shown):
        shown = shown + [["", f"... {len(rows) - len(shown)} more in the HTML/CSV", "", "", "", "", ""]]
    img_w = 9.0
    img_h = float(np.clip(0.85 * img_w * ext_z / max(sum(widths), 1e-6), 2.5, 12.0))
    table_h = 0.25 + 0.19 * (len(shown) + 1) if shown else 0.4
    fig = Figure(figsize=(img_w, img_h + table_h + 0.6))
    top = 1.0 - 0.6 / (img_h + table_h + 0.6)
    bottom = table_h / (img_h + table_h + 0.6)
    gs = fig.add_gridspec(1, 2, width_ratios=widths, left=0.04, right=0.98, top=top, bottom=bottom)
    for col, view in enumerate(views):
        ax = fig.add_subplot(gs[0, col])
        (dw, dh), (nr, nc) = view["pixel_mm"], view["mip"].shape
        ax.imshow(
            view["mip"], origin="upper", cmap="gray_r", vmin=0.0, vmax=vmax, interpolation="nearest",
            extent=(0.0, nc * dw, nr * dh, 0.0), aspect="equal",
        )  # fmt: skip
        cx = (np.arange(-1, nc + 1) + 0.5) * dw  # one padding pixel each side closes border contours
        cy = (np.arange(-1, nr + 1) + 0.5) * dh
        for lab_id, proj in view["masks"].items():
            if lab_id in colours and proj.any():
                padded = np.pad(proj, 1).astype(float)
                ax.contour(cx, cy, padded, levels=[0.5], colors=[colours[lab_id]], linewidths=1.2)
        ax.set_xlim(0.0, nc * dw)
        ax.set_ylim(nr * dh, 0.0)
        ax.set_title(f"{view['name']} MIP", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for x, ha, txt in ((0.01, "left", view["sides"][0]), (0.99, "right", view["sides"][1])):
            ax.text(x, 0.5, txt, transform=ax.transAxes, ha=ha, va="center", **_MARK)
        ax.text(0.5, 0.99, "S", transform=ax.transAxes, ha="center", va="top", **_MARK)
    src = title or (Path(image.path).name if image.path else "PET")
    fig.suptitle(
        f"{src} — {stats['units']} window 0–{vmax:g} (inverted)\n{_patient_line(stats)}", fontsize=9, y=0.995
    )
    if shown:
        tax = fig.add_axes((0.04, 0.01, 0.94, bottom - 0.02))
        tax.axis("off")
        u = stats["units"]
        head = ["label", "name", "volume mL", f"max {u}", f"mean {u}", f"peak {u}", "TLG"]
        col_w = [0.07, 0.27, 0.12, 0.135, 0.135, 0.135, 0.135]
        table = tax.table(
            cellText=shown, colLabels=head, loc="upper center", cellLoc="center", colWidths=col_w
        )
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        for i, r in enumerate(stats["objects"][:MAX_TABLE_ROWS]):
            table[i + 1, 0].set_facecolor(colours[int(r["label"])])
            table[i + 1, 0].get_text().set_color("white")
    elif not stats["objects"]:
        fig.text(0.5, 0.02, "no objects in the label map", ha="center", fontsize=9)
    if 0 < len(labels) <= MAX_LEGEND:  # more would hide the image; the table holds the colours
        handles = [Patch(color=colours[lab_id], label=str(lab_id)) for lab_id in labels[:MAX_TABLE_ROWS]]
        fig.axes[0].legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.6, title="label")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def render_html(stats: Mapping[str, Any], png: bytes, title: str = "seganypet report") -> str:
    """A self-contained HTML page: the picture (embedded base64 PNG), the object table, patient summary."""
    esc = html_lib.escape
    u = esc(str(stats["units"]))
    labels = sorted({int(r["label"]) for r in stats["objects"]})
    colours = object_colours(labels)
    head = ["", "label", "name", "kind", "voxels", "volume mL", f"SUVmax ({u})", f"SUVmean ({u})",
            f"SUVpeak ({u})", "TLG", "SUVmax at (i,j,k)", "max / liver"]  # fmt: skip
    body = []
    for r in stats["objects"]:
        name = str(r["name"]) + (f" #{r['component']}" if r.get("component") else "")
        swatch = f'<span class="sw" style="background:{colours[int(r["label"])]}"></span>'
        where = "-" if r["suv_max_ijk"] is None else ", ".join(map(str, r["suv_max_ijk"]))
        cells = [
            swatch, str(r["label"]), esc(name), esc(str(r["kind"])), str(r["voxels"]), _fmt(r["volume_ml"]),
            _fmt(r["suv_max"]), _fmt(r["suv_mean"]), _fmt(r["suv_peak"]), _fmt(r["tlg"], ".1f"), where,
            _fmt(r["ratio_to_liver"]),
        ]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    refs = []
    for role, ref in stats.get("reference", {}).items():
        refs.append(
            f"<li>{esc(role)} ({esc(str(ref['name']))}): {esc(ref['region'])} at voxel "
            f"{', '.join(map(str, ref['centre_ijk']))}, mean {_fmt(ref['mean'])}, SD {_fmt(ref['sd'])} {u}, "
            f"{ref['voxels']} voxels{'' if ref['fits'] else ' (region does not fit inside the object)'}</li>"
        )
    b64 = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #bbb;padding:3px 7px;text-align:right}}td:nth-child(3){{text-align:left}}
.sw{{display:inline-block;width:1em;height:1em}}img{{max-width:100%}}</style></head>
<body><h1>{esc(title)}</h1>
<p>Units: <b>{u}</b>. {esc(_patient_line(stats))}.</p>
<img alt="coronal and sagittal MIPs with object contours" src="data:image/png;base64,{b64}">
<h2>Objects</h2>
<table><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>
<tbody>{"".join(body) or '<tr><td colspan="12">no objects</td></tr>'}</tbody></table>
<h2>Reference regions</h2><ul>{"".join(refs) or "<li>none (no liver or blood-pool object)</li>"}</ul>
<p><small>SUVpeak: {esc(str(stats.get("definitions", {}).get("suv_peak", "")))}.
TLG = SUVmean × MTV. Written by seganypet.</small></p>
</body></html>
"""


def write_report(
    image: PETImage,
    label_map: np.ndarray,
    names: Mapping[int, str] | None,
    out_png: str | os.PathLike[str],
    html: str | os.PathLike[str] | None = None,
    *,
    suv_max: float | None = None,
    stats: Mapping[str, Any] | None = None,
    kinds: Mapping[int, str] | None = None,
    title: str | None = None,
) -> Path:
    """Write the report PNG (and the HTML page when ``html`` is given), atomically.

    Args:
        image: the PET.
        label_map: integer ``(I, J, K)`` on ``image``'s grid.
        names: label -> name (used when ``stats`` is None).
        out_png: PNG path.
        html: optional HTML path (the PNG is embedded, the page stands alone).
        suv_max: upper end of the display window in image units (default :func:`default_window`).
        stats: precomputed :func:`seganypet.quant.compute_stats` output (computed when None).
        kinds: passed to ``compute_stats`` when ``stats`` is None.
        title: heading (default: the image's file name).

    Returns:
        the PNG path.
    """
    from seganypet.quant import compute_stats

    if suv_max is not None and not suv_max > 0:
        raise InputError(f"the display window maximum must be positive, got {suv_max}")
    if stats is None:
        stats = compute_stats(image, label_map, names, kinds=kinds)
    png = render_png(image, label_map, stats, suv_max=suv_max, title=title)
    out = Path(out_png)
    with atomic_path(out) as tmp:
        tmp.write_bytes(png)
    if html is not None:
        page = render_html(stats, png, title=title or f"seganypet report: {out.stem}")
        with atomic_path(html) as tmp:
            tmp.write_text(page, encoding="utf-8")
    logger.info("wrote report %s%s", out, f" and {html}" if html else "")
    return out
