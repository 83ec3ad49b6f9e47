"""Session manager of the server: one :class:`seganypet.inference.Session` per user session, with
persistence, limits, per-session locking and a fair compute pool.

On disk (``<data-dir>/sessions/<id>/``)::

    meta.json      id, kind, name, created, image geometry (affine exact), units, colours, extra
    image.npy      the PET array, float32 (I, J, K), exactly as given to ``Session.set_image``
    source/        the uploaded file or the extracted DICOM files (re-read for DICOM SEG export)
    journal.json   ``Session.journal()``: every accepted interaction, written before the reply
    labels.b2      the label map, uint16 (I, J, K), blosc2-packed, written before the reply

A session not in memory (server restarted, or unloaded after ``idle_timeout`` seconds) is restored
on its next request by replaying the journal on the saved image, which rebuilds the exact state.
All model work runs in one FIFO thread pool (``compute_workers`` threads) so that concurrent users are
served in arrival order; each session has an ``asyncio.Lock`` so that its requests run one at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from seganypet.errors import SegAnyPETError
from seganypet.image import PETImage
from seganypet.server.security import check_id, new_token, safe_join

logger = logging.getLogger("seganypet.server.sessions")


class CapacityError(SegAnyPETError):
    """The server already holds ``--max-sessions`` sessions in memory (HTTP 503)."""


class SessionNotFoundError(SegAnyPETError):
    """No session with this id exists (HTTP 404, or 410 for nnInteractive leases)."""


class LeaseExpiredError(SessionNotFoundError):
    """An nnInteractive lease is unknown or expired (HTTP 410: the client's SessionExpiredError)."""


class SessionBusyError(SegAnyPETError):
    """The session is still working on an earlier request (HTTP 409)."""


@dataclass
class ServerConfig:
    """Settings of one server process (see ``seganypet serve --help``)."""

    data_dir: Path
    model: str = "default"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_sessions: int = 16
    idle_timeout: float = 1800.0  # seconds without a request before a session is unloaded
    max_upload_bytes: int = 1024 * 1024 * 1024
    max_image_voxels: int = 400 * 400 * 1000
    compute_workers: int = 1
    lock_timeout: float = 120.0  # seconds a request waits for its session's previous request
    max_windows: int = 8  # Session(max_windows=...): bound on crops per object (latency bound)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()


class ModelProvider:
    """Loads the model once and makes :class:`~seganypet.inference.Session` objects sharing it."""

    def __init__(self, model: str = "default", device: str = "cpu", **session_options: Any) -> None:
        self.model_name = str(model)
        self.device = device
        self.session_options = session_options
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            from seganypet.build import load_model

            self._model = load_model(self.model_name, device=self.device)
        return self._model

    def new_session(self) -> Any:
        from seganypet.inference import Session

        return Session(self._load(), device=self.device, **self.session_options)

    @property
    def supports_boxes(self) -> bool:
        """Whether the model was trained with boxes (else boxes are refused with a sentence)."""
        return bool(getattr(self._load(), "supports_boxes", False))

    @property
    def name(self) -> str:
        """A short name: ``default``, or the checkpoint's file stem."""
        return Path(self.model_name).name.split(".")[0] if os.sep in self.model_name else self.model_name


@dataclass
class ManagedSession:
    """A session as the server holds it: the engine plus its folder, lock and bookkeeping."""

    id: str
    folder: Path
    meta: dict[str, Any]
    image: PETImage
    session: Any
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    cache: dict[str, Any] = field(default_factory=dict)  # transport state that is not persisted

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "api"))

    @property
    def extra(self) -> dict[str, Any]:
        """Transport-specific JSON state persisted in meta.json (colours, buffers, clicks)."""
        return self.meta.setdefault("extra", {})


def _write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_json_default, separators=(",", ":")).encode("utf-8")


def replay_into(session: Any, image: PETImage, events: list[dict]) -> None:
    """Rebuild ``session``'s state: set the image, then replay the journal ``events``."""
    session.set_image(image)
    if events:
        session.replay(events)


class SessionManager:
    """Creates, finds, persists, unloads and restores sessions; runs their model work.

    Args:
        config: the server settings.
        provider: makes engine sessions (``provider.new_session()``); default loads ``config.model``.
    """

    def __init__(self, config: ServerConfig, provider: Any | None = None) -> None:
        self.config = config
        self.provider = (
            provider
            if provider is not None
            else ModelProvider(config.model, config.device, max_windows=config.max_windows)
        )
        self.root = config.data_dir
        if not self.root.exists():  # patient data: readable by the server's user only
            self.root.mkdir(parents=True, mode=0o700)
        for sub in ("sessions", "images", "results", "uploads"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._sessions: dict[str, ManagedSession] = {}
        self._restoring: dict[str, asyncio.Lock] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, config.compute_workers), thread_name_prefix="compute"
        )
        self._reaper: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the idle reaper (call from inside the running event loop)."""
        if self._reaper is None and self.config.idle_timeout > 0:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _reap_loop(self) -> None:
        period = max(0.5, min(30.0, self.config.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.reap_idle()
            except Exception:  # pragma: no cover - never let the reaper die
                logger.exception("idle reaper failed")

    async def reap_idle(self, now: float | None = None) -> list[str]:
        """Unload (not delete) sessions idle longer than ``idle_timeout``; return their ids."""
        now = time.monotonic() if now is None else now
        gone = []
        for sid, ms in list(self._sessions.items()):
            if now - ms.last_used > self.config.idle_timeout and not ms.lock.locked():
                if ms.kind == "nninteractive":
                    await self.delete(sid)  # an expired lease is gone (the client expects 410)
                else:
                    self._sessions.pop(sid, None)
                gone.append(sid)
                logger.info("session %s unloaded after %.0f s idle", sid, now - ms.last_used)
        return gone

    # ------------------------------------------------------------------ helpers
    def folder(self, sid: str) -> Path:
        return safe_join(self.root / "sessions", check_id(sid))

    @property
    def loaded(self) -> list[str]:
        return list(self._sessions)

    def _ensure_capacity(self) -> None:
        if len(self._sessions) < self.config.max_sessions:
            return
        # unload the least recently used idle session that is not busy, if any is past its timeout
        now = time.monotonic()
        idle = sorted(
            (ms for ms in self._sessions.values() if not ms.lock.locked()), key=lambda m: m.last_used
        )
        for ms in idle:
            if now - ms.last_used > self.config.idle_timeout:
                self._sessions.pop(ms.id, None)
                return
        raise CapacityError(
            f"The server already holds its maximum of {self.config.max_sessions} sessions; "
            "close one or try again later."
        )

    def check_image(self, image: PETImage) -> None:
        from seganypet.errors import ImageContentError

        n = int(np.prod(image.shape))
        if n > self.config.max_image_voxels:
            raise ImageContentError(
                f"The image has {n} voxels ({'x'.join(map(str, image.shape))}), more than this "
                f"server's limit of {self.config.max_image_voxels}."
            )

    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the FIFO compute pool (model work)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def in_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the I/O thread pool (reading uploads, encoding files), so that slow
        reads never hold up other users' clicks in the compute pool."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, *args)

    # ------------------------------------------------------------------ create / get / delete
    async def create(
        self,
        image: PETImage,
        *,
        kind: str = "api",
        name: str | None = None,
        sid: str | None = None,
        source_from: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ManagedSession:
        """Create a session on ``image`` (already read and checked); persist it before returning.

        ``source_from`` is the uploaded file or extracted DICOM folder ``image`` was read from; it is
        moved into the session's ``source/`` folder (re-read for DICOM SEG export).
        """
        self.check_image(image)
        self._ensure_capacity()
        sid = check_id(sid) if sid else new_token(12)
        folder = self.folder(sid)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "id": sid,
            "kind": kind,
            "name": name or (Path(image.path).name if image.path else sid),
            "created": time.time(),
            "affine": image.affine.tolist(),
            "shape": list(image.shape),
            "units": image.units,
            "metadata": image.metadata,
            "source": None,
            "extra": extra or {},
        }
        if source_from is not None and Path(source_from).exists():
            (folder / "source").mkdir(exist_ok=True)
            target = folder / "source" / Path(source_from).name
            shutil.move(str(source_from), target)
            meta["source"] = f"source/{target.name}"

        def work() -> Any:
            session = self.provider.new_session()
            session.set_image(image)
            np.save(folder / "image.npy", image.array, allow_pickle=False)
            _write_atomic(folder / "meta.json", dumps(meta))
            _write_atomic(folder / "journal.json", dumps(list(session.journal())))
            return session

        try:
            session = await self.in_pool(work)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        ms = ManagedSession(id=sid, folder=folder, meta=meta, image=image, session=session)
        self._sessions[sid] = ms
        logger.info("session %s (%s) created on %s", sid, kind, image.summary())
        return ms

    async def get(self, sid: str, kind: str | None = None) -> ManagedSession:
        """The session ``sid`` (restored from disk if not in memory)."""
        check_id(sid)
        ms = self._sessions.get(sid)
        if ms is None:
            lock = self._restoring.setdefault(sid, asyncio.Lock())
            async with lock:
                ms = self._sessions.get(sid)
                if ms is None:
                    ms = await self._restore(sid)
            self._restoring.pop(sid, None)
        if kind is not None and ms.kind != kind:
            raise SessionNotFoundError(f"There is no {kind} session {sid!r}.")
        return ms

    async def _restore(self, sid: str) -> ManagedSession:
        folder = self.folder(sid)
        if not (folder / "meta.json").is_file() or not (folder / "image.npy").is_file():
            raise SessionNotFoundError(f"There is no session {sid!r} (it was closed, or never existed).")
        self._ensure_capacity()

        def work() -> tuple[dict, PETImage, Any]:
            meta = json.loads((folder / "meta.json").read_text())
            array = np.load(folder / "image.npy", allow_pickle=False)
            image = PETImage(
                array,
                np.asarray(meta["affine"]),
                units=meta.get("units", "unknown"),
                metadata=meta.get("metadata") or {},
                path=meta.get("name"),
            )
            events = (
                json.loads((folder / "journal.json").read_text())
                if (folder / "journal.json").exists()
                else []
            )
            session = self.provider.new_session()
            replay_into(session, image, events)
            saved = folder / "labels.b2"
            if saved.exists():
                expected = blosc2.unpack_array2(saved.read_bytes())
                if not np.array_equal(np.asarray(session.label_map), expected):
                    logger.warning("session %s: replayed label map differs from the saved one", sid)
            return meta, image, session

        meta, image, session = await self.in_pool(work)
        ms = ManagedSession(id=sid, folder=folder, meta=meta, image=image, session=session)
        self._sessions[sid] = ms
        logger.info("session %s restored from %s", sid, folder)
        return ms

    async def delete(self, sid: str) -> None:
        """Close session ``sid`` and remove its folder."""
        folder = self.folder(sid)
        ms = self._sessions.pop(sid, None)
        if ms is None and not folder.exists():
            raise SessionNotFoundError(f"There is no session {sid!r}.")
        shutil.rmtree(folder, ignore_errors=True)

    def list_on_disk(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Metadata of every persisted session (optionally of one kind), newest first."""
        out = []
        for meta_path in (self.root / "sessions").glob("*/meta.json"):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if kind is None or meta.get("kind") == kind:
                meta = {k: meta.get(k) for k in ("id", "kind", "name", "created", "shape", "units")}
                meta["loaded"] = meta["id"] in self._sessions
                out.append(meta)
        return sorted(out, key=lambda m: -(m.get("created") or 0))

    # ------------------------------------------------------------------ running work
    async def run(self, ms: ManagedSession, fn: Callable[[Any], Any], *, persist: bool = True) -> Any:
        """Run ``fn(engine_session)`` for ``ms`` in the compute pool, one request at a time per session.

        When ``persist`` is true, the journal, the label map and meta.json are written before this
        returns (so before the reply is sent).
        """
        try:
            await asyncio.wait_for(ms.lock.acquire(), timeout=self.config.lock_timeout)
        except asyncio.TimeoutError:
            raise SessionBusyError(
                f"Session {ms.id} is still busy with an earlier request; try again in a moment."
            ) from None
        try:
            ms.last_used = time.monotonic()

            def work() -> Any:
                result = fn(ms.session)
                if persist:
                    self.persist(ms)
                return result

            return await self.in_pool(work)
        finally:
            ms.last_used = time.monotonic()
            ms.lock.release()

    def persist(self, ms: ManagedSession) -> None:
        """Write journal, label map and meta of ``ms`` (atomic replacements; called in the pool)."""
        _write_atomic(ms.folder / "journal.json", dumps(list(ms.session.journal())))
        labels = np.ascontiguousarray(np.asarray(ms.session.label_map, dtype=np.uint16))
        _write_atomic(ms.folder / "labels.b2", blosc2.pack_array2(labels), fsync=False)
        _write_atomic(ms.folder / "meta.json", dumps(ms.meta), fsync=False)

    def source_image(self, ms: ManagedSession) -> PETImage:
        """The session's image with ``source_datasets`` (re-read from ``source/``) when it came from DICOM."""
        if ms.image.source_datasets is None and ms.meta.get("source"):
            from seganypet.io import read_pet

            src = safe_join(ms.folder, ms.meta["source"])
            if src.exists():
                try:
                    again = read_pet(src)
                    if again.shape == ms.image.shape:
                        ms.image.source_datasets = again.source_datasets
                except SegAnyPETError:
                    logger.warning("session %s: cannot re-read its source %s", ms.id, src)
        return ms.image
