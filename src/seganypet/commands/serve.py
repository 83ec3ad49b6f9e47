"""``seganypet serve``: the segmentation server (JSON API, web viewer, nnInteractive, MONAI Label)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from seganypet.errors import InputError

HELP = "run the segmentation server (web viewer, JSON API, nnInteractive and MONAI Label protocols)"
logger = logging.getLogger("seganypet.commands.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other address needs a token)",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--model", default="default", help="model name or checkpoint path (default: shipped weights)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token clients must send (default: $SEGANYPET_TOKEN; none on loopback)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("~/.seganypet/server"),
        help="where sessions, uploads and results persist (default ~/.seganypet/server)",
    )
    parser.add_argument(
        "--max-sessions", type=int, default=16, help="sessions held in memory at once (default 16)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=1800.0,
        help="seconds without a request before a session is unloaded from memory (default 1800)",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=1024.0, help="largest request body in MB (default 1024)"
    )
    parser.add_argument(
        "--max-image-voxels",
        type=int,
        default=400 * 400 * 1000,
        help="largest image in voxels (default 160000000)",
    )
    parser.add_argument(
        "--max-windows",
        type=int,
        default=8,
        help="most 128-voxel crops one object may span (bounds the time of a click; default 8)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="threads running model work (FIFO, shared fairly by all sessions; default 1)",
    )


def make_config(args: argparse.Namespace):  # -> ServerConfig
    from seganypet.server.security import is_loopback_host
    from seganypet.server.sessions import ServerConfig

    token = args.token if args.token is not None else os.environ.get("SEGANYPET_TOKEN") or None
    if not is_loopback_host(args.host) and not token:
        raise InputError(
            f"Listening on {args.host} (not loopback) needs a token: pass --token or set SEGANYPET_TOKEN."
        )
    if token is not None and len(token) < 8:
        raise InputError("The token must have at least 8 characters.")
    for name in ("max_sessions", "workers", "max_image_voxels", "max_windows"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1.")
    if args.max_upload_mb <= 0 or args.idle_timeout <= 0:
        raise InputError("--max-upload-mb and --idle-timeout must be positive.")
    return ServerConfig(
        data_dir=args.data_dir,
        model=args.model,
        device=args.device,
        host=args.host,
        port=args.port,
        token=token,
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_image_voxels=args.max_image_voxels,
        compute_workers=args.workers,
        max_windows=args.max_windows,
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from seganypet.server.app import create_app
    from seganypet.server.sessions import ModelProvider

    config = make_config(args)
    provider = ModelProvider(config.model, config.device, max_windows=config.max_windows)
    _ = provider.supports_boxes  # load the model now: a bad --model fails before listening
    app = create_app(config, provider)
    print(f"seganypet server on http://{config.host}:{config.port}/ (data in {config.data_dir})", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0
