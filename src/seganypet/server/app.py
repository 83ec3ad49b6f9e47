"""FastAPI application factory of ``seganypet serve``.

:func:`create_app` wires the session manager (:mod:`.sessions`) to four thin transports:

- the viewer at ``/`` (static files, :mod:`.static`),
- our JSON API under ``/api`` (:mod:`.api`),
- the nnInteractive remote protocol at ``/claim``, ``/set_image``, ... (:mod:`.nninteractive`),
- the MONAI Label REST subset at ``/info/``, ``/datastore/``, ``/session/``, ``/infer/`` (:mod:`.monailabel`).

Errors: every :class:`~seganypet.errors.SegAnyPETError` becomes a 4xx JSON ``{"detail": sentence}``;
anything else a 500 with a one-line message (logged with its traceback on the server only).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from seganypet import __version__
from seganypet.errors import (
    InputError,
    ModelError,
    PromptError,
    SegAnyPETError,
    SessionStateError,
)
from seganypet.server.security import bearer_from_header, tokens_equal
from seganypet.server.sessions import (
    CapacityError,
    LeaseExpiredError,
    ServerConfig,
    SessionBusyError,
    SessionManager,
    SessionNotFoundError,
)
from seganypet.utils import tune_allocator

logger = logging.getLogger("seganypet.server")

STATIC_DIR = Path(__file__).parent / "static"
BUNDLE = STATIC_DIR / "dist" / "niivue.js"
# paths reachable without the token: the viewer's files, health, MONAI Label's auth discovery
PUBLIC_PREFIXES = ("/static/", "/auth/")
PUBLIC_PATHS = {"/", "/healthz", "/favicon.ico", "/auth"}


def status_for(err: SegAnyPETError) -> int:
    """HTTP status for a user error."""
    if isinstance(err, CapacityError):
        return 503
    if isinstance(err, LeaseExpiredError):
        return 410
    if isinstance(err, SessionNotFoundError):
        return 404
    if isinstance(err, (SessionBusyError, SessionStateError)):
        return 409
    if isinstance(err, PromptError):
        return 422
    if isinstance(err, (InputError, ModelError)):
        return 400
    return 400


class BodyLimitMiddleware:
    """Refuse request bodies above ``limit`` bytes with 413 (checks Content-Length and counts chunks)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = JSONResponse(
            {
                "detail": f"The request body is larger than this server's upload limit of "
                f"{self.limit / 1e6:.0f} MB."
            },
            status_code=413,
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.limit:
                        await too_big(scope, receive, send)
                        return
                except ValueError:
                    pass
        seen = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await too_big(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(config: ServerConfig, provider: Any | None = None) -> FastAPI:
    """Build the FastAPI app for ``config``; ``provider`` makes engine sessions (tests may pass one)."""
    manager = SessionManager(config, provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_allocator()  # also when the app runs under a plain ``uvicorn`` (not through the CLI)
        manager.start()
        yield
        await manager.stop()

    app = FastAPI(
        title="seganypet server",
        version=__version__,
        description="Promptable 3D PET segmentation: JSON API, nnInteractive and MONAI Label protocols.",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.manager = manager
    app.state.config = config

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if config.token:
            path = request.url.path
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if not public:
                given = bearer_from_header(request.headers.get("authorization"))
                if not tokens_equal(given, config.token):
                    return JSONResponse(
                        {"detail": "A valid token is required (header 'Authorization: Bearer <token>')."},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
        return await call_next(request)

    app.add_middleware(BodyLimitMiddleware, limit=config.max_upload_bytes)

    @app.exception_handler(SegAnyPETError)
    async def user_error(request: Request, err: SegAnyPETError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=status_for(err))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors()[:3]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return JSONResponse(
            {"detail": "The request is malformed (" + "; ".join(parts) + ")."}, status_code=422
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"Internal server error ({type(err).__name__}); the server log has the details."},
            status_code=500,
        )

    from seganypet.server import api, monailabel, nninteractive

    app.include_router(api.router)
    app.include_router(nninteractive.router)
    app.include_router(monailabel.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/", include_in_schema=False)
    async def index() -> Any:
        if not BUNDLE.exists():
            return HTMLResponse(
                "<!doctype html><title>seganypet viewer not built</title>"
                "<h1>The web viewer is not built</h1><p>The NiiVue bundle "
                "(<code>static/dist/niivue.js</code>) is missing. Build it with "
                "<code>bash scripts/setup_web.sh</code> (needs npm), then reload this page. "
                "The JSON API (<code>/api</code>), nnInteractive and MONAI Label endpoints "
                "work without it.</p>",
                status_code=503,
            )
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app
