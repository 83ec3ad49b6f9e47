"""Our own JSON API (used by the web viewer), under ``/api``. Every route is a thin layer over
:class:`seganypet.inference.Session`; coordinates are voxel indices ``(i, j, k)`` of the image as
uploaded (nibabel order for NIfTI), intensities SUV when the image is in SUV.

See docs/server.md for the table of routes and examples.
"""

from __future__ import annotations

import gzip
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from seganypet.errors import ImageReadError, InputError, PromptError, SegAnyPETError
from seganypet.image import PETImage
from seganypet.server.security import safe_extract_zip, safe_join, sanitize_filename
from seganypet.server.sessions import ManagedSession, SessionManager

logger = logging.getLogger("seganypet.server.api")
router = APIRouter(prefix="/api", tags=["seganypet JSON API"])

PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#fffac8",
    "#800000",
    "#aaffc3",
    "#808000",
]
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm", ".zip")


def manager_of(request: Request) -> SessionManager:
    return request.app.state.manager


# ---------------------------------------------------------------------------- reading images
def read_upload(path: Path, workdir: Path, max_bytes: int) -> tuple[PETImage, Path]:
    """Read an uploaded file (NIfTI/MHA/NRRD, or a zip of a DICOM series) -> (image, source path).

    Zips are extracted safely (:func:`~seganypet.server.security.safe_extract_zip`) into a folder.
    """
    from seganypet.io import read_pet

    source = path
    if path.name.lower().endswith(".zip"):
        source = workdir / "dicom"
        safe_extract_zip(path, source, max_total_bytes=max_bytes)
        path.unlink(missing_ok=True)
    try:
        image = read_pet(source)
    except SegAnyPETError as err:  # same sentence, without the server's folders
        msg = str(err).replace(str(source), path.name).replace(f"{workdir}/", "").replace(str(workdir), "")
        raise type(err)(msg) from None
    except Exception as err:  # a reader's own error on hostile bytes -> one sentence
        raise ImageReadError(
            f"The uploaded file {path.name!r} cannot be read as a PET image ({type(err).__name__})."
        ) from None
    image.path = path.name
    return image, source


def _nifti_bytes(array: np.ndarray, affine: np.ndarray, level: int = 1) -> bytes:
    """A gzipped NIfTI-1 file of ``array`` (I, J, K) with the RAS ``affine``."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=level)


# ---------------------------------------------------------------------------- state
def color_of(ms: ManagedSession, label: int) -> str:
    colors = ms.extra.setdefault("colors", {})
    return colors.get(str(label), PALETTE[(int(label) - 1) % len(PALETTE)])


def state_of(ms: ManagedSession, manager: SessionManager) -> dict[str, Any]:
    s = ms.session
    objects = []
    for o in s.objects:
        o = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(o).items()}
        o["color"] = color_of(ms, o["label"])
        objects.append(o)
    return {
        "id": ms.id,
        "name": ms.meta.get("name"),
        "shape": list(ms.image.shape),
        "spacing": list(ms.image.spacing),
        "affine": ms.image.affine.tolist(),
        "units": ms.image.units,
        "objects": objects,
        "active_label": s.active_label,
        "n_events": len(s.journal()),
        "dicom": bool(ms.meta.get("source") and "dicom" in str(ms.meta.get("source"))),
    }


def _ijk(value: list[float], shape: tuple[int, ...], what: str = "point") -> tuple[int, int, int]:
    if len(value) != 3:
        raise PromptError(f"A {what} needs three voxel indices (i, j, k), got {len(value)}.")
    ijk = tuple(int(round(float(v))) for v in value)
    if any(c < 0 or c >= n for c, n in zip(ijk, shape)):
        raise PromptError(f"The {what} {list(ijk)} lies outside the image of shape {list(shape)}.")
    return ijk  # type: ignore[return-value]


# ---------------------------------------------------------------------------- models
class OpenRequest(BaseModel):
    image: str | None = Field(
        None, description="name of an image (file or DICOM folder) in <data-dir>/images"
    )
    phantom: int | None = Field(None, description="seed of a synthetic torso phantom to open instead")


class PointRequest(BaseModel):
    ijk: list[float]
    positive: bool = True
    label: int | None = Field(None, description="object to edit (default: the active one)")


class BoxRequest(BaseModel):
    a: list[float]
    b: list[float]
    label: int | None = None


class ObjectRequest(BaseModel):
    name: str | None = None
    color: str | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$")


# ---------------------------------------------------------------------------- routes
@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    manager = manager_of(request)
    cfg = manager.config
    try:
        boxes = bool(manager.provider.supports_boxes)
    except SegAnyPETError:
        boxes = False
    return {
        "model": getattr(manager.provider, "name", cfg.model),
        "supports_boxes": boxes,
        "limits": {
            "max_upload_bytes": cfg.max_upload_bytes,
            "max_image_voxels": cfg.max_image_voxels,
            "max_sessions": cfg.max_sessions,
            "idle_timeout_s": cfg.idle_timeout,
        },
        "loaded_sessions": len(manager.loaded),
    }


@router.get("/images")
async def list_images(request: Request) -> dict[str, list[str]]:
    """Names of the images in ``<data-dir>/images`` that ``POST /api/sessions/open`` can open."""
    root = manager_of(request).root / "images"
    names = sorted(p.name for p in root.iterdir() if p.is_dir() or p.name.lower().endswith(IMAGE_SUFFIXES))
    return {"images": names}


@router.get("/sessions")
async def list_sessions(request: Request) -> dict[str, Any]:
    return {"sessions": manager_of(request).list_on_disk(kind="api")}


@router.post("/sessions")
async def upload_session(
    request: Request, file: Annotated[UploadFile, File()], name: str = Form("")
) -> dict[str, Any]:
    """Open an uploaded image: NIfTI / MHA / NRRD file, or a zip of one DICOM PET series."""
    manager = manager_of(request)
    filename = sanitize_filename(file.filename, default="upload.nii.gz")
    workdir = Path(tempfile.mkdtemp(prefix="up_", dir=manager.root / "uploads"))
    try:
        target = workdir / filename
        with open(target, "wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        image, source = await manager.in_io(read_upload, target, workdir, manager.config.max_upload_bytes * 4)
        ms = await manager.create(image, kind="api", name=name or filename, source_from=source)
        return state_of(ms, manager)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@router.post("/sessions/open")
async def open_session(request: Request, body: OpenRequest) -> dict[str, Any]:
    """Open an image from ``<data-dir>/images`` by name, or a synthetic phantom by seed."""
    manager = manager_of(request)
    if (body.image is None) == (body.phantom is None):
        raise InputError("Give exactly one of 'image' (a name in the data folder) or 'phantom' (a seed).")
    if body.image is not None:
        from seganypet.io import read_pet

        path = safe_join(manager.root / "images", sanitize_filename(body.image))
        if not path.exists():
            raise InputError(f"There is no image {body.image!r} in the server's data folder.")
        image = await manager.in_io(read_pet, path)
        name = path.name
    else:
        from seganypet.phantoms import make_phantom

        phantom = await manager.in_io(make_phantom, int(body.phantom))
        image, name = phantom.pet, f"phantom_{int(body.phantom)}"
    ms = await manager.create(image, kind="api", name=name)
    return state_of(ms, manager)


@router.get("/sessions/{sid}")
async def get_session(request: Request, sid: str) -> dict[str, Any]:
    manager = manager_of(request)
    return state_of(await manager.get(sid, kind="api"), manager)


@router.delete("/sessions/{sid}")
async def delete_session(request: Request, sid: str) -> dict[str, Any]:
    manager = manager_of(request)
    await manager.get(sid, kind="api")
    await manager.delete(sid)
    return {"deleted": sid}


@router.get("/sessions/{sid}/image.nii.gz")
async def get_image(request: Request, sid: str) -> Response:
    """The session's PET image as float32 NIfTI (for the viewer)."""
    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")
    data = await manager.in_io(_nifti_bytes, ms.image.array, ms.image.affine)
    return Response(data, media_type="application/gzip")


@router.get("/sessions/{sid}/labels.nii.gz")
async def get_labels(request: Request, sid: str) -> Response:
    """The current label map as uint16 NIfTI on the image's grid (for the viewer's overlay)."""
    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")
    labels = await manager.run(ms, lambda s: np.asarray(s.label_map, dtype=np.uint16).copy(), persist=False)
    data = await manager.in_io(_nifti_bytes, labels, ms.image.affine)
    return Response(data, media_type="application/gzip")


async def _edit(request: Request, sid: str, fn: Any) -> dict[str, Any]:
    """Run ``fn(engine_session, ms)`` under the session's lock; answer the new state (read under the
    lock too) and ``voxels`` of the mask ``fn`` returned (-1 when it returned none)."""
    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")

    def work(session: Any) -> dict[str, Any]:
        mask = fn(session, ms)
        out = state_of(ms, manager)
        out["voxels"] = int(np.count_nonzero(mask)) if mask is not None else -1
        return out

    return await manager.run(ms, work)


def _select(session: Any, label: int | None) -> None:
    if label is not None and label != session.active_label:
        session.select_object(int(label))


@router.post("/sessions/{sid}/points")
async def add_point(request: Request, sid: str, body: PointRequest) -> dict[str, Any]:
    """A positive (``positive: true``) or negative click at voxel ``ijk`` on the active object."""

    def fn(s: Any, ms: ManagedSession) -> Any:
        ijk = _ijk(body.ijk, ms.image.shape)
        _select(s, body.label)
        return s.add_point(ijk, positive=body.positive)

    return await _edit(request, sid, fn)


@router.post("/sessions/{sid}/boxes")
async def add_box(request: Request, sid: str, body: BoxRequest) -> dict[str, Any]:
    """A 3D box with opposite corners ``a`` and ``b`` (voxel indices, inclusive)."""

    def fn(s: Any, ms: ManagedSession) -> Any:
        a = _ijk(body.a, ms.image.shape, "box corner")
        b = _ijk(body.b, ms.image.shape, "box corner")
        _select(s, body.label)
        return s.add_box(a, b)

    return await _edit(request, sid, fn)


@router.post("/sessions/{sid}/undo")
async def undo(request: Request, sid: str) -> dict[str, Any]:
    return await _edit(request, sid, lambda s, ms: s.undo())


@router.post("/sessions/{sid}/redo")
async def redo(request: Request, sid: str) -> dict[str, Any]:
    return await _edit(request, sid, lambda s, ms: s.redo())


@router.post("/sessions/{sid}/reset")
async def reset(request: Request, sid: str) -> dict[str, Any]:
    """Clear the active object's prompts and mask."""
    return await _edit(request, sid, lambda s, ms: s.reset())


@router.post("/sessions/{sid}/objects")
async def new_object(request: Request, sid: str, body: ObjectRequest) -> dict[str, Any]:
    """Add an object (it becomes the active one)."""

    def fn(s: Any, ms: ManagedSession) -> None:
        label = s.new_object(body.name or None)
        if body.color:
            ms.extra.setdefault("colors", {})[str(label)] = body.color

    return await _edit(request, sid, fn)


def _check_label(s: Any, label: int) -> None:
    if label not in {int(o["label"]) for o in s.objects}:
        raise InputError(f"There is no object with label {label}.")


@router.patch("/sessions/{sid}/objects/{label}")
async def update_object(request: Request, sid: str, label: int, body: ObjectRequest) -> dict[str, Any]:
    """Rename and/or recolour object ``label``."""

    def fn(s: Any, ms: ManagedSession) -> None:
        _check_label(s, label)
        if body.name:
            s.rename_object(label, body.name)
        if body.color:
            ms.extra.setdefault("colors", {})[str(label)] = body.color

    return await _edit(request, sid, fn)


@router.post("/sessions/{sid}/objects/{label}/select")
async def select_object(request: Request, sid: str, label: int) -> dict[str, Any]:
    def fn(s: Any, ms: ManagedSession) -> None:
        _check_label(s, label)
        s.select_object(label)

    return await _edit(request, sid, fn)


@router.delete("/sessions/{sid}/objects/{label}")
async def delete_object(request: Request, sid: str, label: int) -> dict[str, Any]:
    def fn(s: Any, ms: ManagedSession) -> None:
        _check_label(s, label)
        s.delete_object(label)

    return await _edit(request, sid, fn)


def mip_png(image: PETImage, labels: np.ndarray, colors: dict[int, str], wmax: float) -> bytes:
    """A coronal maximum-intensity projection (inverted grey, 0..``wmax``) with the objects' MIP in
    colour; rows run superior to inferior, columns patient left to right (as NiiVue's slices)."""
    import matplotlib.image

    cols = np.abs(image.affine[:3, :3])
    order = [int(np.argmax(cols[r])) for r in range(3)]  # array axis along world x, y, z
    if len(set(order)) != 3:
        order = [0, 1, 2]
    arr = np.transpose(image.array, order)
    lab = np.transpose(labels, order)
    for w in range(3):  # make each axis increase along its world direction
        if image.affine[w, order[w]] < 0:
            arr, lab = np.flip(arr, w), np.flip(lab, w)
    mip = np.nan_to_num(arr.max(axis=1)).T[::-1]  # (z, x): superior first, patient left first
    lmip = lab.max(axis=1).T[::-1]
    grey = 1.0 - np.clip(mip / max(wmax, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, hexcol in colors.items():
        sel = lmip == label
        if sel.any():
            c = np.array([int(hexcol[i : i + 2], 16) / 255 for i in (1, 3, 5)])
            rgb[sel] = 0.45 * rgb[sel] + 0.55 * c
    sp = [image.spacing[order[0]], image.spacing[order[2]]]
    h, w = rgb.shape[:2]
    scale = sp[1] / sp[0]  # pixel aspect: rows are z spacing, columns x spacing
    rows = np.clip((np.arange(int(round(h * scale))) / scale).astype(int), 0, h - 1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.ascontiguousarray(rgb[rows]), format="png")
    return buf.getvalue()


@router.get("/sessions/{sid}/mip.png")
async def mip(request: Request, sid: str, wmax: float = 8.0) -> Response:
    """Coronal MIP of the PET (SUV window 0..``wmax``) with the objects in their colours."""
    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")

    def work(s: Any) -> tuple[np.ndarray, dict[int, str]]:
        colors = {int(o["label"]): color_of(ms, int(o["label"])) for o in s.objects}
        return np.asarray(s.label_map).copy(), colors

    labels, colors = await manager.run(ms, work, persist=False)
    data = await manager.in_io(mip_png, ms.image, labels, colors, float(wmax))
    return Response(data, media_type="image/png")


@router.get("/sessions/{sid}/stats")
async def stats(request: Request, sid: str) -> dict[str, Any]:
    """Per-object statistics (``seganypet.quant.compute_stats``): volume, SUVmax/mean/peak, TLG."""
    from seganypet.quant import compute_stats

    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")

    def work(s: Any) -> dict[str, Any]:
        return compute_stats(ms.image, np.asarray(s.label_map), dict(s.names))

    result = await manager.run(ms, work, persist=False)
    return _jsonable(result)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@router.get("/sessions/{sid}/export")
async def export(request: Request, sid: str, format: str = "nifti") -> FileResponse:
    """Download the label map: ``format=nifti`` (.nii.gz on the image's grid, names in the side-car
    JSON, also kept in ``<data-dir>/results/<id>/``) or ``format=dicom-seg`` (images read from DICOM)."""
    from seganypet.io import write_dicom_seg, write_label_map

    manager = manager_of(request)
    ms = await manager.get(sid, kind="api")
    out_dir = manager.root / "results" / ms.id
    stem = sanitize_filename(Path(str(ms.meta.get("name") or ms.id)).name.split(".")[0], default=ms.id)

    if format == "nifti":

        def work(s: Any) -> Path:
            return Path(
                write_label_map(
                    np.asarray(s.label_map), ms.image, out_dir / f"{stem}_seg.nii.gz", dict(s.names)
                )
            )

        media = "application/gzip"
    elif format in ("dicom-seg", "dicom_seg", "seg"):

        def work(s: Any) -> Path:
            ref = manager.source_image(ms)
            if ref.source_datasets is None:
                raise InputError(
                    "DICOM SEG export needs an image that was uploaded as DICOM; export NIfTI instead."
                )
            return Path(
                write_dicom_seg(np.asarray(s.label_map), ref, out_dir / f"{stem}_seg.dcm", dict(s.names))
            )

        media = "application/dicom"
    else:
        raise InputError(f"Unknown export format {format!r}; use 'nifti' or 'dicom-seg'.")
    path = await manager.run(ms, work, persist=False)
    return FileResponse(path, media_type=media, filename=path.name)
