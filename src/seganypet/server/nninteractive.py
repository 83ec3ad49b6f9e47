"""Server side of the nnInteractive remote protocol (``nninteractive-client`` 2.6.0).

The napari plugin and the 3D Slicer extension of nnInteractive drive a remote engine through
``nnInteractiveRemoteInferenceSession``; this module answers it with seganypet's Session:

- ``POST /claim`` -> ``{"lease_token", "idle_timeout_seconds", "liveness_timeout_seconds"}``; every later
  request carries the lease in ``X-Lease-Token`` (an unknown or expired lease -> 410, a full server -> 503).
- ``POST /set_image``: body = packed array ``(C, X, Y, Z)`` (wire format below), ``X-Meta`` =
  ``{"image_properties": {"spacing": [...]}}``; channel 0 is segmented, voxel size from ``spacing`` (mm).
- ``POST /set_target_buffer`` ``{"shape", "dtype"}``: the client's mask buffer, shape ``(X, Y, Z)``.
- ``add_point_interaction`` ``{"coordinates": [x, y, z], "include_interaction": positive}``,
  ``add_bbox_interaction`` ``{"bbox_coords": [[x0, x1], [y0, y1], [z0, z1]]}`` (half-open; a box one
  voxel thick along an axis is a 2D box), ``add_initial_seg_interaction`` (packed mask body),
  ``reset_interactions``, ``undo``, ``predict``: each prediction answers with ``X-Meta``
  ``{"ran_prediction", "bbox"}`` and the packed new content of ``bbox`` of the target buffer.
- Scribbles are mapped to up to 3 points sampled along the scribble; lassos to their bounding box
  (when the model takes boxes, else 422 with a sentence the client shows).

Packed array: ``b"NNIA"``, version 1, codec id (1 zstd, 2 lz4), ndim, dtype-name length, dtype name,
int64 shape, uint32 chunk count, then per chunk uint64 raw length, uint64 compressed length, blosc2 frame.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import blosc2
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from seganypet.errors import InputError, PromptError, SegAnyPETError, SessionStateError
from seganypet.image import PETImage
from seganypet.server.security import new_token
from seganypet.server.sessions import (
    CapacityError,
    LeaseExpiredError,
    ManagedSession,
    SessionManager,
    SessionNotFoundError,
)

router = APIRouter(tags=["nnInteractive remote protocol"])

META_HEADER = "X-Meta"
LEASE_HEADER = "X-Lease-Token"
MAGIC = b"NNIA"
_DTYPES = {"float32", "float16", "float64", "uint8", "int8", "int16", "uint16", "int32", "uint32", "bool"}
LIVENESS_S = 120.0


# ---------------------------------------------------------------------------- wire format
def unpack_array(buf: bytes, max_voxels: int) -> np.ndarray:
    """Decode a packed array, refusing malformed input and arrays above ``max_voxels`` elements."""
    try:
        magic, version, codec_id, ndim, name_len = struct.unpack_from("<4sBBBB", buf, 0)
        if magic != MAGIC or version != 1 or codec_id not in (1, 2) or not 1 <= ndim <= 5:
            raise ValueError("bad header")
        off = 8
        name = bytes(buf[off : off + name_len]).decode("ascii")
        off += name_len
        if name not in _DTYPES:
            raise ValueError(f"dtype {name}")
        shape = struct.unpack_from(f"<{ndim}q", buf, off)
        off += 8 * ndim
        if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.float64)) > max_voxels:
            raise InputError(
                f"The array of shape {list(shape)} exceeds this server's limit of {max_voxels} voxels."
            )
        dtype = np.dtype(name)
        (nchunks,) = struct.unpack_from("<I", buf, off)
        off += 4
        out = np.empty(int(np.prod(shape)), dtype=dtype)
        total, written, mv = out.nbytes, 0, memoryview(buf)
        for _ in range(nchunks):
            ulen, clen = struct.unpack_from("<QQ", buf, off)
            off += 16
            if written + ulen > total or ulen % dtype.itemsize or off + clen > len(buf):
                raise ValueError("chunk sizes")
            src = mv[off : off + clen]
            nbytes, _, _ = blosc2.get_cbuffer_sizes(src)
            if nbytes != ulen:
                raise ValueError("chunk frame size")
            blosc2.decompress2(src, dst=out[written // dtype.itemsize : (written + ulen) // dtype.itemsize])
            written += ulen
            off += clen
        if written != total:
            raise ValueError("payload size")
        return out.reshape(shape)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"The request body is not a valid packed nnInteractive array ({err}).") from None


def pack_array(arr: np.ndarray) -> bytes:
    """Encode ``arr`` in the packed format (zstd, one chunk per GiB)."""
    arr = np.ascontiguousarray(arr)
    name = arr.dtype.name.encode("ascii")
    parts = [
        struct.pack(f"<4sBBBB{len(name)}s", MAGIC, 1, 1, arr.ndim, len(name), name),
        struct.pack(f"<{arr.ndim}q", *arr.shape),
    ]
    raw = memoryview(arr).cast("B")
    step = 1 << 30
    chunks = [raw[i : i + step] for i in range(0, max(raw.nbytes, 1), step)] if raw.nbytes else []
    parts.append(struct.pack("<I", len(chunks)))
    for c in chunks:
        comp = blosc2.compress2(
            c,
            typesize=arr.dtype.itemsize,
            codec=blosc2.Codec.ZSTD,
            clevel=3,
            filters=[blosc2.Filter.NOFILTER],
        )
        parts.append(struct.pack("<QQ", c.nbytes, len(comp)))
        parts.append(comp)
    return b"".join(parts)


# ---------------------------------------------------------------------------- leases
def _leases(request: Request) -> dict[str, dict[str, Any]]:
    state = request.app.state
    if not hasattr(state, "nni_leases"):
        state.nni_leases = {}
    return state.nni_leases


def _manager(request: Request) -> SessionManager:
    return request.app.state.manager


def _token(request: Request) -> str:
    token = request.headers.get(LEASE_HEADER)
    if not token:
        raise LeaseExpiredError("This request has no lease; claim one first (POST /claim).")
    return token


def _purge(request: Request) -> None:
    """Forget leases idle past the timeout, and leases whose session was reaped or released."""
    manager = _manager(request)
    now = time.monotonic()
    leases = _leases(request)
    for token, lease in list(leases.items()):
        idle = now - lease.get("last_used", now) > manager.config.idle_timeout
        gone = lease.get("image") and token not in manager.loaded and not manager.folder(token).exists()
        if idle or gone:
            leases.pop(token, None)


async def _lease(request: Request) -> tuple[str, dict[str, Any]]:
    """The lease of this request (from memory, or from a session persisted before a restart)."""
    token = _token(request)
    _purge(request)
    leases = _leases(request)
    lease = leases.get(token)
    if lease is None:
        try:
            await _manager(request).get(token, kind="nninteractive")
        except (SessionNotFoundError, InputError):
            raise LeaseExpiredError("This lease is unknown or has expired; claim a new one.") from None
        lease = leases.setdefault(token, {"claimed": time.monotonic(), "image": True})
    lease["last_used"] = time.monotonic()
    return token, lease


async def _session(request: Request) -> ManagedSession:
    token, _ = await _lease(request)
    manager = _manager(request)
    try:
        ms = await manager.get(token, kind="nninteractive")
    except SessionNotFoundError:
        raise SessionStateError("No image has been set for this lease yet (call set_image first).") from None
    if "sent" not in ms.cache:  # restored after a restart: the client holds what we last sent
        ms.cache["sent"] = await manager.run(
            ms, lambda s: np.asarray(s.mask(), dtype=bool).copy(), persist=False
        )
    return ms


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise InputError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InputError("The request body must be a JSON object.")
    return body


def _meta(request: Request) -> dict[str, Any]:
    try:
        meta = json.loads(request.headers.get(META_HEADER) or "{}")
    except ValueError:
        raise InputError(f"The {META_HEADER} header is not valid JSON.") from None
    return meta if isinstance(meta, dict) else {}


def _remaining(request: Request, lease: dict[str, Any]) -> float:
    timeout = _manager(request).config.idle_timeout
    return max(0.0, timeout - (time.monotonic() - lease.get("last_used", time.monotonic())))


# ---------------------------------------------------------------------------- predictions
def _prediction(ms: ManagedSession, new_mask: np.ndarray | None, ran: bool = True) -> Response:
    """Reply with the bbox of what changed in the client's target buffer and its new content."""
    meta: dict[str, Any] = {"ran_prediction": bool(ran), "bbox": None}
    body = b""
    target = ms.extra.get("target")
    if ran and new_mask is not None:
        new = np.asarray(new_mask, dtype=bool)
        sent = ms.cache.get("sent")
        if sent is None or sent.shape != new.shape:
            sent = np.zeros(new.shape, dtype=bool)
        changed = np.argwhere(new != sent)
        if changed.size:
            lo, hi = changed.min(0), changed.max(0) + 1
            meta["bbox"] = [[int(a), int(b)] for a, b in zip(lo, hi)]
            dtype = (
                np.dtype(target["dtype"]) if target and target.get("dtype") in _DTYPES else np.dtype("uint8")
            )
            region = new[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(dtype)
            body = pack_array(region)
        ms.cache["sent"] = new.copy()
    return Response(body, media_type="application/octet-stream", headers={META_HEADER: json.dumps(meta)})


def _apply(session: Any, ms: ManagedSession, item: dict[str, Any]) -> Any:
    """Apply one interaction to the engine session; return the active object's mask."""
    kind = item["kind"]
    if kind == "point":
        return session.add_point(tuple(item["ijk"]), positive=item["positive"])
    if kind == "box":
        if not ms.cache.get("boxes", True):
            raise PromptError("This model was not trained with boxes; use points instead.")
        return session.add_box(tuple(item["a"]), tuple(item["b"]))
    raise InputError(f"unknown interaction {kind}")  # pragma: no cover


async def _interact(request: Request, items: list[dict[str, Any]], run_prediction: bool) -> Response:
    manager = _manager(request)
    ms = await _session(request)
    ms.cache["boxes"] = _supports_boxes(manager)
    if not run_prediction:  # queue until /predict (persisted so a restart keeps it)
        ms.extra.setdefault("pending", []).extend(items)

        def save(session: Any) -> None:
            return None

        await manager.run(ms, save)
        return _prediction(ms, None, ran=False)

    def work(session: Any) -> Any:
        pending = ms.extra.get("pending", [])
        todo = pending + items
        mask = None
        for item in todo:
            mask = _apply(session, ms, item)
        ms.extra["pending"] = []
        return mask if mask is not None else session.mask()

    mask = await manager.run(ms, work)
    return _prediction(ms, mask)


def _supports_boxes(manager: SessionManager) -> bool:
    try:
        return bool(manager.provider.supports_boxes)
    except SegAnyPETError:
        return False


def _shape(ms: ManagedSession) -> tuple[int, ...]:
    return tuple(ms.image.shape)


def _check_ijk(coords: Any, shape: tuple[int, ...]) -> tuple[int, int, int]:
    try:
        ijk = tuple(int(round(float(c))) for c in coords)
    except (TypeError, ValueError):
        raise PromptError("Point coordinates must be three numbers.") from None
    if len(ijk) != 3 or any(c < 0 or c >= n for c, n in zip(ijk, shape)):
        raise PromptError(f"The point {list(ijk)} lies outside the image of shape {list(shape)}.")
    return ijk  # type: ignore[return-value]


def _box_from_bbox(bbox: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    try:
        lo = [int(b[0]) for b in bbox]
        hi = [int(b[1]) - 1 for b in bbox]
    except (TypeError, ValueError, IndexError):
        raise PromptError("bbox_coords must be [[x0, x1], [y0, y1], [z0, z1]].") from None
    if len(lo) != 3 or any(a < 0 or b < a or b >= n for a, b, n in zip(lo, hi, shape)):
        raise PromptError(f"The box {bbox} is empty or lies outside the image of shape {list(shape)}.")
    return {"kind": "box", "a": lo, "b": hi}


# ---------------------------------------------------------------------------- routes
@router.get("/capabilities")
async def capabilities(request: Request) -> dict[str, Any]:
    boxes = _supports_boxes(_manager(request))
    return {
        "supported_interactions": {
            "point": True,
            "bbox": boxes,
            "scribble": True,
            "lasso": boxes,
            "initial_seg": True,
        },
        "channel_mapping": {"bbox": [1, 2], "point": [3, 4], "scribble": [5, 6], "lasso": [7, 8]},
        "num_interaction_channels": 8,
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": [1, 1, 1],
        "interaction_decay": 1.0,
        "inference_session_version": "seganypet-1",
        "license": "Apache-2.0 (seganypet); see the model card for the weights",
        "supports_undo": True,
        "do_autozoom": True,
    }


@router.post("/claim")
async def claim(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    _purge(request)
    leases = _leases(request)
    waiting = sum(1 for t in leases if t not in manager.loaded)
    if len(manager.loaded) + waiting >= manager.config.max_sessions:
        await manager.reap_idle()
        waiting = sum(1 for t in leases if t not in manager.loaded)
        if len(manager.loaded) + waiting >= manager.config.max_sessions:
            raise CapacityError(f"The server is at capacity ({manager.config.max_sessions} sessions).")
    token = new_token(24)
    now = time.monotonic()
    leases[token] = {"claimed": now, "last_used": now}
    return {
        "lease_token": token,
        "idle_timeout_seconds": manager.config.idle_timeout,
        "liveness_timeout_seconds": LIVENESS_S,
    }


@router.post("/release")
async def release(request: Request) -> dict[str, Any]:
    token = _token(request)
    _leases(request).pop(token, None)
    try:
        await _manager(request).delete(token)
    except (SessionNotFoundError, InputError):
        pass
    return {"released": True}


@router.post("/heartbeat")
async def heartbeat(request: Request) -> dict[str, Any]:
    token = _token(request)
    _purge(request)
    lease = _leases(request).get(token)
    if lease is None:
        _, lease = await _lease(request)
    lease["last_beat"] = time.monotonic()
    return {"remaining_seconds": _remaining(request, lease)}


@router.get("/lease_status")
async def lease_status(request: Request) -> dict[str, Any]:
    token = _token(request)
    _purge(request)
    lease = _leases(request).get(token)
    if lease is None:
        _, lease = await _lease(request)
    return {
        "remaining_seconds": _remaining(request, lease),
        "idle_timeout_seconds": _manager(request).config.idle_timeout,
    }


@router.post("/set_image")
async def set_image(request: Request) -> dict[str, Any]:
    token, lease = await _lease(request)
    manager = _manager(request)
    props = _meta(request).get("image_properties") or {}
    arr = unpack_array(await request.body(), manager.config.max_image_voxels)
    if arr.ndim != 4:
        raise InputError(f"set_image expects a 4D array (C, X, Y, Z), got shape {list(arr.shape)}.")
    spacing = props.get("spacing") or [1.0, 1.0, 1.0]
    try:
        spacing = [float(s) for s in list(spacing)[-3:]]
    except (TypeError, ValueError):
        raise InputError("image_properties.spacing must be three numbers (mm).") from None
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError("image_properties.spacing must be three positive numbers (mm).")
    image = PETImage(
        np.asarray(arr[0], dtype=np.float32),
        np.diag([*spacing, 1.0]),
        units="unknown",
        metadata={"source": "nninteractive"},
        path="nninteractive",
    )
    if token in manager.loaded or manager.folder(token).exists():
        await manager.delete(token)
    ms = await manager.create(
        image,
        kind="nninteractive",
        sid=token,
        name="nninteractive",
        extra={"target": lease.get("target"), "pending": []},
    )
    ms.cache["sent"] = np.zeros(image.shape, dtype=bool)
    lease["image"] = True
    return {"original_image_shape": list(arr.shape)}


@router.post("/set_target_buffer")
async def set_target_buffer(request: Request) -> dict[str, Any]:
    _, lease = await _lease(request)
    body = await _json(request)
    target = {"shape": [int(s) for s in body.get("shape", [])], "dtype": str(body.get("dtype", "uint8"))}
    lease["target"] = target
    manager = _manager(request)
    token = _token(request)
    if token in manager.loaded or manager.folder(token).exists():
        ms = await manager.get(token, kind="nninteractive")
        if tuple(target["shape"]) != _shape(ms):
            raise InputError(
                f"The target buffer's shape {target['shape']} differs from the image's {list(_shape(ms))}."
            )
        ms.extra["target"] = target

        def work(session: Any) -> None:
            ms.cache["sent"] = np.asarray(session.mask(), dtype=bool).copy()

        await manager.run(ms, work)
    return {"ok": True}


@router.post("/set_do_autozoom")
async def set_do_autozoom(request: Request) -> dict[str, Any]:
    _, lease = await _lease(request)
    lease["do_autozoom"] = bool((await _json(request)).get("do_autozoom", True))
    return {"ok": True}


@router.post("/add_point_interaction")
async def add_point(request: Request) -> Response:
    body = await _json(request)
    ms = await _session(request)
    ijk = _check_ijk(body.get("coordinates"), _shape(ms))
    item = {"kind": "point", "ijk": list(ijk), "positive": bool(body.get("include_interaction", True))}
    return await _interact(request, [item], bool(body.get("run_prediction", True)))


@router.post("/add_bbox_interaction")
async def add_bbox(request: Request) -> Response:
    body = await _json(request)
    ms = await _session(request)
    if not body.get("include_interaction", True):
        raise PromptError("Negative boxes are not supported by seganypet; use negative points.")
    if not _supports_boxes(_manager(request)):
        raise PromptError("This model was not trained with boxes; use points instead.")
    item = _box_from_bbox(body.get("bbox_coords"), _shape(ms))
    return await _interact(request, [item], bool(body.get("run_prediction", True)))


async def _mask_body(request: Request, ms: ManagedSession) -> tuple[np.ndarray, dict[str, Any]]:
    meta = _meta(request)
    mask = unpack_array(await request.body(), _manager(request).config.max_image_voxels)
    if mask.shape != _shape(ms):
        raise InputError(f"The mask's shape {list(mask.shape)} differs from the image's {list(_shape(ms))}.")
    return mask > 0, meta


@router.post("/add_scribble_interaction")
async def add_scribble(request: Request) -> Response:
    """A scribble becomes up to 3 points spread along it (same polarity)."""
    ms = await _session(request)
    mask, meta = await _mask_body(request, ms)
    vox = np.argwhere(mask)
    if not len(vox):
        raise PromptError("The scribble is empty.")
    picks = vox[np.unique(np.linspace(0, len(vox) - 1, num=min(3, len(vox))).round().astype(int))]
    positive = bool(meta.get("include_interaction", True))
    items = [{"kind": "point", "ijk": [int(v) for v in p], "positive": positive} for p in picks]
    return await _interact(request, items, bool(meta.get("run_prediction", True)))


@router.post("/add_lasso_interaction")
async def add_lasso(request: Request) -> Response:
    """A lasso becomes the box around it (models trained with boxes only)."""
    ms = await _session(request)
    mask, meta = await _mask_body(request, ms)
    if not _supports_boxes(_manager(request)):
        raise PromptError("Lasso needs a model trained with boxes, and this one is not; use points instead.")
    if not meta.get("include_interaction", True):
        raise PromptError("Negative lassos are not supported by seganypet; use negative points.")
    vox = np.argwhere(mask)
    if not len(vox):
        raise PromptError("The lasso is empty.")
    item = {"kind": "box", "a": [int(v) for v in vox.min(0)], "b": [int(v) for v in vox.max(0)]}
    return await _interact(request, [item], bool(meta.get("run_prediction", True)))


@router.post("/add_initial_seg_interaction")
async def add_initial_seg(request: Request) -> Response:
    """The client's mask becomes the active object's mask (refined by later clicks)."""
    manager = _manager(request)
    ms = await _session(request)
    mask, _ = await _mask_body(request, ms)

    def work(session: Any) -> Any:
        session.set_mask(mask)
        ms.cache["sent"] = mask.copy()  # the client already wrote it into its buffer
        return np.asarray(session.mask(), dtype=bool)

    new = await manager.run(ms, work)
    return _prediction(ms, new)


@router.post("/reset_interactions")
async def reset_interactions(request: Request) -> dict[str, Any]:
    manager = _manager(request)
    ms = await _session(request)

    def work(session: Any) -> None:
        session.reset()
        ms.extra["pending"] = []
        ms.cache["sent"] = np.zeros(_shape(ms), dtype=bool)  # the client zeroed its buffer

    await manager.run(ms, work)
    return {"ok": True}


@router.post("/undo")
async def undo(request: Request) -> Response:
    manager = _manager(request)
    ms = await _session(request)

    def work(session: Any) -> Any:
        if ms.extra.get("pending"):
            ms.extra["pending"].pop()
            return None
        try:
            return session.undo()
        except SessionStateError:  # nothing to undo: the client's undo() returns False
            return None

    mask = await manager.run(ms, work)
    return _prediction(ms, mask, ran=mask is not None)


@router.post("/predict")
async def predict(request: Request) -> Response:
    return await _interact(request, [], True)
