"""Fixtures of the server tests: a tiny model saved with ``save_model`` (boxes enabled, and one
without), a synthetic PET image with a bright sphere, and a real uvicorn server on a free loopback
port (in a thread) around the real :class:`seganypet.inference.Session`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import pytest
from server_helpers import CENTRE, MAXW, SHAPE, SPACING, free_port, make_volume, requires_in_ci  # noqa: F401


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny models saved via ``seganypet.build.save_model``: boxes enabled, and without boxes."""
    import torch

    from seganypet.build import build_model, save_model

    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(
        build_model("tiny", supports_boxes=True).eval(), out / "tiny_boxes.pt", {"purpose": "server tests"}
    )
    torch.manual_seed(0)
    save_model(
        build_model("tiny", supports_boxes=False).eval(), out / "tiny_points.pt", {"purpose": "server tests"}
    )
    return out


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> str:
    return str(model_dir / "tiny_boxes.pt")


@pytest.fixture(scope="session")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    arr, affine = make_volume()
    path = tmp_path_factory.mktemp("images") / "sphere.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), path)
    return path


class RunningServer:
    def __init__(self, url: str, app, data_dir: Path) -> None:
        self.url = url
        self.app = app
        self.data_dir = data_dir

    @property
    def manager(self):
        return self.app.state.manager


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(model=..., **config)`` -> a server in a thread on 127.0.0.1 (stopped after the test)."""
    import uvicorn

    from seganypet.server.app import create_app
    from seganypet.server.sessions import ModelProvider, ServerConfig

    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(model: str, **options) -> RunningServer:
        port = free_port()
        data = Path(options.pop("data_dir", tmp_path / f"data{len(started)}"))
        options.setdefault("max_windows", MAXW)
        config = ServerConfig(data_dir=data, model=model, port=port, **options)
        app = create_app(config, ModelProvider(model, max_windows=config.max_windows))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        t0 = time.monotonic()
        while not server.started:
            if time.monotonic() - t0 > 30 or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        started.append((server, thread))
        return RunningServer(f"http://127.0.0.1:{port}", app, data)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)
