"""Training loop: CLI run, kill + resume continues the loss curve exactly, two-process gloo DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seganypet.cli import main
from seganypet.training.loop import InteractionConfig
from seganypet.training.trainer import TrainConfig, lr_factor, train

FAST = InteractionConfig(num_clicks=3, cpcl_prompts=2, loss_size=16)
# the tiny preset on 64^3 crops: 8x less data per step than 128^3, keeps the CPU tests fast
TINY64 = {
    "name": "tiny64",
    "image_size": 64,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "prompt_embed_dim": 48,
    "mask_in_chans": 8,
    "iou_head_hidden_dim": 32,
    "decoder_transformer_mlp_dim": 64,
    "decoder_transformer_num_heads": 4,
    "box_embeddings": True,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and the resume test needs equal thread counts)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(store: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        store=str(store),
        out=str(out),
        preset=TINY64,
        steps=6,
        warmup=2,
        val_every=1000,
        ckpt_every=2,
        val_objects=2,
        interaction=FAST,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _losses_csv(path: Path) -> list[tuple[int, str]]:
    with open(path, newline="") as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_lr_schedule() -> None:
    cfg = TrainConfig(store="s", out="o", steps=100, warmup=10, min_lr_factor=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    assert 0.1 < lr_factor(55, cfg) < 1.0


def test_kill_and_resume_continues_exactly(small_store: Path, tmp_path: Path) -> None:
    ref = train(_cfg(small_store, tmp_path / "ref"))
    assert ref["step"] == 6 and len(ref["losses"]) == 6
    # the same run in a subprocess, SIGKILLed once it has written its step-2 checkpoint and gone on
    out = tmp_path / "killed"
    preset = tmp_path / "tiny64.json"
    preset.write_text(json.dumps(TINY64))
    cmd = [
        sys.executable,
        "-m",
        "seganypet",
        "--no-progress",
        "train",
        str(small_store),
        "-o",
        str(out),
        "--preset",
        str(preset),
        "--steps",
        "6",
        "--warmup",
        "2",
        "--val-every",
        "1000",
        "--ckpt-every",
        "2",
        "--val-objects",
        "2",
        "--num-clicks",
        "3",
        "--cpcl-prompts",
        "2",
        "--loss-size",
        "16",
        "--seed",
        "3",
        "--threads",
        str(torch.get_num_threads()),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.csv").is_file() and len(_losses_csv(out / "metrics.csv")) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_rows = _losses_csv(out / "metrics.csv")
    assert 3 <= len(killed_rows) < 6
    res = train(_cfg(small_store, out), resume=True)
    ckpt_step = 6 - len(res["losses"])
    assert ckpt_step in (2, 4)
    # the resumed steps reproduce the uninterrupted run exactly, and the logged curve is continuous
    assert res["losses"] == ref["losses"][ckpt_step:]
    assert _losses_csv(out / "metrics.csv") == _losses_csv(tmp_path / "ref" / "metrics.csv")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, store: str, out: str, results: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    res = train(_cfg(Path(store), Path(out), steps=3, ckpt_every=2))
    torch.save(res, Path(results) / f"rank{rank}.pt")


def test_two_process_gloo_ddp(small_store: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "ddp"
    mp.start_processes(
        _ddp_worker,
        args=(2, _free_port(), str(small_store), str(out), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["step"] == r1["step"] == 3
    # both ranks trained on their own shard (different losses) with all-reduced gradients (same norms)
    assert r0["losses"] != r1["losses"]
    assert r0["grad_norms"] == pytest.approx(r1["grad_norms"], rel=1e-6)
    # rank 0 alone wrote the checkpoint and the logs: one line per checkpoint, one row per step
    log = (out / "train.log").read_text()
    assert log.count("checkpoint at step 2 written") == 1 and log.count("checkpoint at step 3 written") == 1
    assert [s for s, _ in _losses_csv(out / "metrics.csv")] == [1, 2, 3]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2


def test_cli_train_and_bad_store(small_store: Path, tmp_path: Path, capsys) -> None:
    preset = tmp_path / "tiny64.json"
    preset.write_text(json.dumps(TINY64))
    rc = main(
        [
            "train",
            str(small_store),
            "-o",
            str(tmp_path / "run"),
            "--preset",
            str(preset),
            "--steps",
            "2",
            "--val-every",
            "2",
            "--val-objects",
            "2",
            "--num-clicks",
            "2",
            "--cpcl-prompts",
            "0",
            "--loss-size",
            "16",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "step 2" in text and "validation" in text
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "val.csv").is_file()
    # export as a shippable fp16 model file (how weights/default.pt is made)
    from seganypet.build import load_model
    from seganypet.training.export import export_run

    path = export_run(tmp_path / "run", tmp_path / "ship" / "model.pt", notes={"command": "test"})
    shipped = load_model(str(path))
    assert shipped.metadata["training"]["steps"] == 2 and shipped.metadata["command"] == "test"
    assert json.loads(path.with_suffix(".json").read_text())["metadata"]["training"]["dtype"] == "float16"
    # a second run into the same folder without --resume is refused
    assert main(["train", str(small_store), "-o", str(tmp_path / "run"), "--preset", "tiny"]) == 2
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "x"), "--preset", "tiny"]) == 2


def test_init_from_published_checkpoint(shared_reference: Path, small_store: Path, tmp_path: Path) -> None:
    """--init loads the published checkpoint format (dict with model_state_dict + argparse args)."""
    from seganypet.build import load_model
    from seganypet.training.trainer import Trainer

    ckpt = shared_reference / "checkpoint.pth"
    ref = load_model(str(ckpt))
    cfg = _cfg(small_store, tmp_path / "ft", preset="unused", init=str(ckpt), steps=1, ckpt_every=1)
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # every published weight is taken over (the box-corner embeddings are our untrained extension)
    published = [k for k in ref.state_dict() if "box_corner" not in k]
    assert len(published) > 50 and all(torch.equal(start[k], ref.state_dict()[k]) for k in published)
    res = trainer.run()
    assert res["step"] == 1 and torch.isfinite(torch.tensor(res["losses"])).all()
    tuned = load_model(str(tmp_path / "ft" / "model.pt"))
    assert tuned.config.encoder_embed_dim == ref.config.encoder_embed_dim
    assert tuned.metadata["training"]["steps"] == 1
