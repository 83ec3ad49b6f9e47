"""The subset of the MONAI Label REST API that 3D Slicer's MONAI Label module and OHIF use.

- ``GET /info/``: the app: model ``deepedit`` (type ``deepedit``: clicks) and one entry named after the
  served model (same engine), labels ``{"lesion": 1, "organ": 2, "background": 0}``.
- ``GET /datastore/?output=stats|all``, ``PUT /datastore/`` or ``/datastore/image?image=ID`` (upload),
  ``GET|HEAD|DELETE /datastore/image``, ``GET /datastore/image/info``,
  ``PUT /datastore/label?image=ID&tag=TAG``, ``GET /datastore/label?label=ID&tag=TAG``.
- ``PUT /session/`` (upload one image or the files of a DICOM series), ``GET|DELETE /session/{id}``.
- ``POST /infer/{model}?image=ID[&session_id=S][&output=image|json|all|dicom_seg]`` with the form field
  ``params`` = JSON ``{"foreground": [[i, j, k], ...], "background": [...], "label": "lesion"}`` (voxel
  indices of the image file). The clicks of one label on one image extend the previous request's (the
  way Slicer sends them): only new clicks are run; otherwise the object is reset and all are run.
  The answer (default ``output=all``) is multipart: ``params`` (JSON) and the label NIfTI, whose voxels
  of the object carry the label's value.

Data lives in ``<data-dir>/datastore/{images,labels/<tag>,sessions}``; ids are sanitised.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from seganypet.errors import InputError, PromptError
from seganypet.server.api import _nifti_bytes, read_upload
from seganypet.server.security import check_id, safe_join, sanitize_filename, tokens_equal
from seganypet.server.sessions import ManagedSession, SessionManager, SessionNotFoundError

router = APIRouter(tags=["MONAI Label REST subset"])
LABELS = {"lesion": 1, "organ": 2, "background": 0}
EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".zip", ".dcm")


def _manager(request: Request) -> SessionManager:
    return request.app.state.manager


def _store(request: Request) -> Path:
    root = _manager(request).root / "datastore"
    for sub in ("images", "labels", "sessions"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


def _split(name: str) -> tuple[str, str]:
    low = name.lower()
    for ext in EXTS:
        if low.endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return Path(name).stem, Path(name).suffix


def _image_id(value: str) -> str:
    stem, _ = _split(sanitize_filename(value))
    return check_id(stem.replace(".", "_")[:64] or "image", "image id")


def _find_image(store: Path, image_id: str) -> Path:
    image_id = _image_id(image_id)
    for p in (store / "images").glob(f"{image_id}.*"):
        if _split(p.name)[0] == image_id:
            return p
    raise SessionNotFoundError(f"There is no image {image_id!r} in the datastore.")


def _find_label(store: Path, image_id: str, tag: str) -> Path:
    image_id, tag = _image_id(image_id), check_id(tag or "final", "label tag")
    folder = safe_join(store / "labels", tag)
    for p in folder.glob(f"{image_id}.*") if folder.exists() else []:
        if _split(p.name)[0] == image_id:
            return p
    raise SessionNotFoundError(f"There is no label {image_id!r} with tag {tag!r} in the datastore.")


async def _save_upload(request: Request, file: UploadFile, folder: Path, stem: str) -> Path:
    """Save an upload as ``folder/<stem><ext>`` after checking it reads as a PET image."""
    manager = _manager(request)
    _, ext = _split(sanitize_filename(file.filename, default="image.nii.gz"))
    work = Path(tempfile.mkdtemp(prefix="ml_", dir=manager.root / "uploads"))
    try:
        tmp = work / f"{stem}{ext or '.nii.gz'}"
        with open(tmp, "wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        probe = work / "probe"
        probe.mkdir()
        shutil.copy(tmp, probe / tmp.name)
        image, _ = await manager.in_io(
            read_upload, probe / tmp.name, probe, manager.config.max_upload_bytes * 4
        )
        manager.check_image(image)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob(f"{stem}.*"):
            if _split(old.name)[0] == stem:
                old.unlink()
        final = folder / tmp.name
        shutil.move(str(tmp), final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _params(params: str) -> dict[str, Any]:
    try:
        p = json.loads(params or "{}")
    except ValueError:
        raise InputError("The 'params' field is not valid JSON.") from None
    if not isinstance(p, dict):
        raise InputError("The 'params' field must be a JSON object.")
    return p


# ---------------------------------------------------------------------------- info and auth
@router.get("/info/")
async def info(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    name = getattr(manager.provider, "name", "seganypet")
    model = {
        "type": "deepedit",
        "labels": LABELS,
        "dimension": 3,
        "description": "SegAnyPET promptable 3D PET segmentation: foreground/background clicks (IJK).",
        "config": {},
    }
    return {
        "name": "seganypet",
        "description": "seganypet server (MONAI Label REST subset)",
        "version": "0.8.5",
        "labels": [k for k in LABELS if k != "background"],
        "models": {"deepedit": model, f"seganypet_{name}": dict(model)},
        "trainers": {},
        "strategies": {},
        "scoring": {},
        "train_stats": {},
        "datastore": _status(_store(request)),
    }


@router.get("/auth/")
async def auth_status(request: Request) -> dict[str, Any]:
    return {"enabled": bool(_manager(request).config.token)}


@router.post("/auth/token")
async def auth_token(request: Request, username: str = Form(""), password: str = Form("")) -> Any:
    """MONAI Label's password login: the password is the server token."""
    token = _manager(request).config.token
    if token and not tokens_equal(password, token):
        return JSONResponse({"detail": "The password is not this server's token."}, status_code=401)
    return {"access_token": token or "", "token_type": "Bearer"}


@router.get("/auth/token/valid")
async def auth_valid(request: Request) -> Any:
    token = _manager(request).config.token
    from seganypet.server.security import bearer_from_header

    if token and not tokens_equal(bearer_from_header(request.headers.get("authorization")), token):
        return JSONResponse({"detail": "The token is not valid."}, status_code=401)
    return {"valid": True}


# ---------------------------------------------------------------------------- datastore
def _status(store: Path) -> dict[str, Any]:
    images = [_split(p.name)[0] for p in (store / "images").iterdir()]
    tags: dict[str, int] = {}
    for tag_dir in (store / "labels").iterdir():
        tags[tag_dir.name] = sum(1 for _ in tag_dir.iterdir())
    done = (
        {_split(p.name)[0] for p in (store / "labels" / "final").glob("*")}
        if (store / "labels" / "final").exists()
        else set()
    )
    return {"total": len(images), "completed": len(done & set(images)), "label_tags": tags}


@router.get("/datastore/")
async def datastore(request: Request, output: str = "stats") -> Any:
    store = _store(request)
    if output == "all":
        objects: dict[str, Any] = {}
        for p in sorted((store / "images").iterdir()):
            iid, ext = _split(p.name)
            objects[iid] = {
                "image": {"ext": ext, "info": {"ts": int(p.stat().st_mtime), "name": p.name}},
                "labels": {},
            }
        for tag_dir in (store / "labels").iterdir():
            for p in tag_dir.iterdir():
                iid, ext = _split(p.name)
                if iid in objects:
                    objects[iid]["labels"][tag_dir.name] = {
                        "ext": ext,
                        "info": {"ts": int(p.stat().st_mtime)},
                    }
        return {
            "name": "seganypet",
            "description": "seganypet datastore",
            "images_dir": "images",
            "labels_dir": "labels",
            "objects": objects,
        }
    if output == "train":
        return [
            {"image": f"images/{_find_image(store, i).name}", "label": f"labels/final/{p.name}"}
            for p in (store / "labels" / "final").glob("*")
            for i in [_split(p.name)[0]]
        ]
    return _status(store)


@router.put("/datastore/")
@router.put("/datastore/image")
async def add_image(
    request: Request, file: Annotated[UploadFile, File()], image: str = "", params: str = Form("{}")
) -> Any:
    _params(params)
    image_id = _image_id(image or _split(sanitize_filename(file.filename))[0] or "image")
    await _save_upload(request, file, _store(request) / "images", image_id)
    return {"image": image_id}


@router.delete("/datastore/image")
async def remove_image(request: Request, id: str) -> Any:
    store = _store(request)
    _find_image(store, id).unlink()
    for tag_dir in (store / "labels").iterdir():
        for p in tag_dir.glob(f"{_image_id(id)}.*"):
            p.unlink()
    return {}


@router.api_route("/datastore/image", methods=["GET", "HEAD"])
async def download_image(request: Request, image: str) -> Any:
    path = _find_image(_store(request), image)
    if request.method == "HEAD":
        return {}
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")


@router.get("/datastore/image/info")
async def image_info(request: Request, image: str) -> dict[str, Any]:
    path = _find_image(_store(request), image)
    return {"name": path.name, "ts": int(path.stat().st_mtime), "size": path.stat().st_size}


@router.put("/datastore/label")
async def save_label(
    request: Request,
    image: str,
    label: Annotated[UploadFile, File()],
    tag: str = "final",
    params: str = Form("{}"),
) -> Any:
    store = _store(request)
    _params(params)
    src = _find_image(store, image)
    image_id = _split(src.name)[0]
    folder = safe_join(store / "labels", check_id(tag or "final", "label tag"))
    manager = _manager(request)
    work = Path(tempfile.mkdtemp(prefix="ml_", dir=manager.root / "uploads"))
    try:
        _, ext = _split(sanitize_filename(label.filename, default="label.nii.gz"))
        tmp = work / f"{image_id}{ext or '.nii.gz'}"
        with open(tmp, "wb") as out:
            shutil.copyfileobj(label.file, out, 1 << 20)
        await manager.in_io(_check_label_file, tmp, src)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), folder / tmp.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"image": image_id, "label": image_id, "tag": tag}


def _check_label_file(path: Path, image_path: Path) -> None:
    import SimpleITK as sitk

    try:
        lab = sitk.ReadImage(str(path))
    except Exception:
        raise InputError(f"The uploaded label {path.name!r} is not a readable image.") from None
    if lab.GetDimension() != 3:
        raise InputError(f"The uploaded label {path.name!r} is not a 3D image.")


@router.api_route("/datastore/label", methods=["GET", "HEAD"])
async def download_label(request: Request, label: str, tag: str = "final") -> Any:
    path = _find_label(_store(request), label, tag)
    if request.method == "HEAD":
        return {}
    return FileResponse(path, filename=path.name, media_type="application/octet-stream")


# ---------------------------------------------------------------------------- sessions
@router.put("/session/")
async def create_session(request: Request, files: Annotated[list[UploadFile], File()]) -> dict[str, Any]:
    store = _store(request)
    sid = secrets.token_hex(12)
    folder = store / "sessions" / sid
    if len(files) == 1:
        await _save_upload(request, files[0], folder, "image")
    else:  # the files of one DICOM series
        dicom = folder / "image"
        dicom.mkdir(parents=True)
        for n, f in enumerate(files):
            with open(dicom / f"{n:06d}_{sanitize_filename(f.filename)}", "wb") as out:
                shutil.copyfileobj(f.file, out, 1 << 20)
    now = int(time.time())
    info = {
        "name": sid,
        "path": str(folder),
        "image": sid,
        "meta": {},
        "create_ts": now,
        "last_access_ts": now,
        "expiry": int(_manager(request).config.idle_timeout),
    }
    (folder / "info.json").write_text(json.dumps(info))
    return {"session_id": sid, "session_info": info}


def _session_image(store: Path, sid: str) -> Path:
    folder = safe_join(store / "sessions", check_id(sid, "session id"))
    for p in folder.glob("image*") if folder.exists() else []:
        return p
    raise SessionNotFoundError(f"There is no MONAI Label session {sid!r}.")


@router.get("/session/{session_id}")
async def get_session(request: Request, session_id: str) -> dict[str, Any]:
    _session_image(_store(request), session_id)
    folder = _store(request) / "sessions" / session_id
    return json.loads((folder / "info.json").read_text())


@router.delete("/session/{session_id}")
async def remove_session(request: Request, session_id: str) -> dict[str, Any]:
    store = _store(request)
    _session_image(store, session_id)
    folder = store / "sessions" / session_id
    info = json.loads((folder / "info.json").read_text())
    shutil.rmtree(folder, ignore_errors=True)
    return info


# ---------------------------------------------------------------------------- infer
def _clicks(p: dict[str, Any], key: str, shape: tuple[int, ...]) -> list[list[int]]:
    raw = p.get(key) or []
    if not isinstance(raw, list):
        raise PromptError(f"'{key}' must be a list of [i, j, k] voxel indices.")
    out = []
    for c in raw:
        try:
            ijk = [int(round(float(v))) for v in c][:3]
        except (TypeError, ValueError):
            raise PromptError(f"'{key}' must be a list of [i, j, k] voxel indices.") from None
        if len(ijk) != 3 or any(v < 0 or v >= n for v, n in zip(ijk, shape)):
            raise PromptError(f"The click {c} lies outside the image of shape {list(shape)}.")
        out.append(ijk)
    return out


async def _engine_session(request: Request, key: str, path: Path) -> ManagedSession:
    manager = _manager(request)
    sid = "ml-" + hashlib.sha1(key.encode()).hexdigest()[:24]
    try:
        return await manager.get(sid, kind="monailabel")
    except SessionNotFoundError:
        pass
    work = Path(tempfile.mkdtemp(prefix="ml_", dir=manager.root / "uploads"))
    try:
        src = work / path.name
        (shutil.copytree if path.is_dir() else shutil.copy)(path, src)
        image, source = await manager.in_io(read_upload, src, work, manager.config.max_upload_bytes * 4)
        return await manager.create(
            image, kind="monailabel", sid=sid, name=key, source_from=source, extra={"clicks": {}}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _multipart(params: dict[str, Any], filename: str, data: bytes) -> Response:
    boundary = "seganypet" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
        f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n".encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return Response(b"".join(parts), media_type=f"multipart/form-data; boundary={boundary}")


@router.post("/infer/{model}")
async def infer(
    request: Request,
    model: str,
    image: str = "",
    session_id: str = "",
    output: str = "all",
    params: str = Form("{}"),
    file: Annotated[UploadFile | None, File()] = None,
    label: Annotated[UploadFile | None, File()] = None,
) -> Any:
    manager = _manager(request)
    name = getattr(manager.provider, "name", "seganypet")
    if model not in ("deepedit", f"seganypet_{name}"):
        raise SessionNotFoundError(f"There is no model {model!r}; GET /info/ lists them.")
    p = _params(params)
    store = _store(request)
    if session_id:
        path, key = _session_image(store, session_id), f"session:{session_id}"
    elif image:
        path = _find_image(store, image)
        key = f"image:{_split(path.name)[0]}:{int(path.stat().st_mtime_ns)}"
    elif file is not None:
        raise InputError("Upload the image to the datastore (or a session) first, then infer with its id.")
    else:
        raise InputError("Give the image id (?image=ID) or a session id (?session_id=ID).")
    ms = await _engine_session(request, key, path)
    shape = tuple(ms.image.shape)
    label_name = str(p.get("label") or "lesion")
    fg = _clicks(p, "foreground", shape) + (_clicks(p, label_name, shape) if label_name in p else [])
    bg = _clicks(p, "background", shape)
    if not fg:
        raise PromptError("Give at least one foreground click ('foreground': [[i, j, k], ...]).")
    value = int(LABELS.get(label_name, 1)) or 1

    def work(s: Any) -> np.ndarray:
        names = {str(v): int(k) for k, v in dict(s.names).items()}
        if label_name in names:
            if s.active_label != names[label_name]:
                s.select_object(names[label_name])
        else:
            s.new_object(label_name)
        prev = ms.extra.setdefault("clicks", {}).get(label_name, {"fg": [], "bg": []})
        if fg[: len(prev["fg"])] == prev["fg"] and bg[: len(prev["bg"])] == prev["bg"]:
            new = [(c, True) for c in fg[len(prev["fg"]) :]] + [(c, False) for c in bg[len(prev["bg"]) :]]
        else:
            s.reset()
            new = [(c, True) for c in fg] + [(c, False) for c in bg]
        mask = s.mask()
        for c, positive in new:
            mask = s.add_point(tuple(c), positive=positive)
        ms.extra["clicks"][label_name] = {"fg": fg, "bg": bg}
        return np.asarray(mask, dtype=bool).copy()

    mask = await manager.run(ms, work)
    out = mask.astype(np.uint8) * value
    data = await manager.in_io(_nifti_bytes, out, ms.image.affine)
    result = {"label_names": {label_name: value}, "latencies": {}, "voxels": int(mask.sum())}
    if output == "json":
        return result
    if output == "image":
        return Response(
            data,
            media_type="application/gzip",
            headers={"Content-Disposition": 'attachment; filename="label.nii.gz"'},
        )
    if output == "dicom_seg":
        from seganypet.io import write_dicom_seg

        ref = manager.source_image(ms)
        if ref.source_datasets is None:
            raise InputError("DICOM SEG output needs an image that came as DICOM.")
        with tempfile.TemporaryDirectory() as tmp:
            seg = await manager.in_io(write_dicom_seg, out, ref, Path(tmp) / "label.dcm", {value: label_name})
            blob = Path(seg).read_bytes()
        return Response(
            blob,
            media_type="application/dicom",
            headers={"Content-Disposition": 'attachment; filename="label.dcm"'},
        )
    return _multipart(result, "label.nii.gz", data)
