"""``seganypet train``: optimiser, schedule, DDP, checkpoints, resume, logging and validation.

Output folder (written by rank 0 only)::

    OUT/checkpoint.pt   full training state (atomic): model config + weights, optimiser, scheduler,
                        step, RNG states (python, numpy, torch, sampler, clicks), data position, config
    OUT/model.pt        the current weights in the model checkpoint format (seganypet.build.save_model)
    OUT/train.log       plain-text log
    OUT/metrics.csv     one row per step (loss terms, lr, samples/s); metrics.jsonl the same as JSON lines
    OUT/val.csv         validation Dice at 1/3/5 clicks per object kind, every ``val_every`` steps
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seganypet.errors import CheckpointError, InputError
from seganypet.training import dist as tdist
from seganypet.training.dataset import ObjectSampler, validation_items
from seganypet.training.loop import InteractionConfig, InteractiveStep, validate
from seganypet.training.store import Store
from seganypet.utils import atomic_path, progress

logger = logging.getLogger("seganypet.training.trainer")

CKPT_FORMAT = "seganypet-train-checkpoint"
_METRIC_FIELDS = [
    "step",
    "loss",
    "seg_loss",
    "cpcl",
    "cpcl_confident",
    "lr",
    "grad_norm",
    "samples_per_s",
    "elapsed_s",
]


@dataclass
class TrainConfig:
    """Every option of a training run (stored in the checkpoint; ``--resume`` reuses it)."""

    store: str
    out: str
    preset: str | dict[str, Any] = "small"  #: preset name, or a ModelConfig dict (e.g. from a JSON file)
    init: str | None = None  #: start from these weights (published or ours; seganypet.build.load_model)
    steps: int = 1000
    batch_size: int = 1
    accum: int = 1  #: gradient accumulation (micro-batches per optimiser step)
    lr: float = 3e-4  #: image encoder learning rate
    decoder_lr_factor: float = 0.1  #: prompt encoder + mask decoder LR = lr x this (published: 0.1)
    weight_decay: float = 0.1
    warmup: int = 50  #: linear warm-up steps, then cosine decay to lr x min_lr_factor
    min_lr_factor: float = 0.05
    clip: float = 1.0  #: gradient-norm clipping (0: off)
    amp: str = "auto"  #: "auto" (bf16 on GPU, off on CPU), "none", "bf16", "fp16"
    device: str = "auto"
    seed: int = 0
    interaction: InteractionConfig = field(default_factory=InteractionConfig)
    kind_weights: dict[str, float] | None = None
    val_every: int = 100
    val_objects: int = 20
    val_clicks: int = 5
    ckpt_every: int = 50
    max_minutes: float | None = None  #: stop (with a checkpoint) after this wall time
    metadata: dict[str, Any] = field(default_factory=dict)  #: recorded in the exported model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["interaction"] = InteractionConfig(**data.get("interaction", {}))
        return cls(**data)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at optimiser step ``step`` (0-based): linear warm-up, cosine to ``min_lr_factor``."""
    if step < cfg.warmup:
        return (step + 1) / max(1, cfg.warmup)
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    t = min(max(t, 0.0), 1.0)
    return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: image encoder at ``lr``; prompt encoder + mask decoder at ``lr * decoder_lr_factor``.
    Biases, norms and embeddings get no weight decay."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith("image_encoder.") else "decoder"
        decay = p.ndim >= 2 and "embed" not in name and "rel_pos" not in name and "norm" not in name
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        lr = cfg.lr if part == "encoder" else cfg.lr * cfg.decoder_lr_factor
        out.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_nodecay'}",
            }
        )
    return out


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available.")
    return device


def _rng_state(step_rng: np.random.Generator, sampler: ObjectSampler) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "sampler": dataclasses.asdict(sampler.state()),
        "clicks": step_rng.bit_generator.state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], step_rng: np.random.Generator, sampler: ObjectSampler) -> None:
    torch.set_rng_state(state["torch"])
    sampler.set_state(state["sampler"])
    step_rng.bit_generator.state = state["clicks"]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs a training job described by a :class:`TrainConfig` (single process or under torchrun)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = _resolve_device(cfg.device)
        self.info = tdist.init(self.device)
        self.resume = resume
        self.store = Store(cfg.store)
        train_ids = self.store.split("train")
        if not train_ids:
            raise InputError(f"{cfg.store}: the store has no training cases.")
        self.val_ids = self.store.split("val")
        self.shard = tdist.shard(train_ids, self.info)
        self.model = self._build_model()
        norm = getattr(self.model.config, "normalization", "zscore_nonzero")
        self.sampler = ObjectSampler(
            self.store,
            self.shard,
            self.model.config.image_size,
            seed=cfg.seed * 1000 + self.info.rank,
            kind_weights=cfg.kind_weights,
            normalization=norm,
        )
        self.val_sampler = ObjectSampler(
            self.store,
            self.val_ids or train_ids,
            self.model.config.image_size,
            seed=0,
            augment=False,
            normalization=norm,
        )
        self.val_items = validation_items(self.store, self.val_ids, cfg.val_objects, seed=cfg.seed)
        self.step_module = InteractiveStep(
            self.model, cfg.interaction, seed=cfg.seed * 1000 + 17 + self.info.rank
        )
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        amp = cfg.amp
        if amp == "auto":
            amp = "bf16" if self.device.startswith("cuda") else "none"
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.scaler = (
            torch.amp.GradScaler("cuda") if amp == "fp16" and self.device.startswith("cuda") else None
        )
        self.ddp: torch.nn.Module = self.step_module
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.info.local_rank] if self.device.startswith("cuda") else None
            self.ddp = DistributedDataParallel(self.step_module, device_ids=ids, find_unused_parameters=True)
        self.step = 0
        self.elapsed_before = 0.0
        self.history: list[dict[str, Any]] = []
        self._log_handler: logging.Handler | None = None

    # ------------------------------------------------------------------ model
    def _build_model(self) -> torch.nn.Module:
        from seganypet.build import build_model, load_model

        torch.manual_seed(self.cfg.seed)  # identical initial weights on every rank
        if self.cfg.init:
            model = load_model(self.cfg.init, device="cpu")
        else:
            preset = self.cfg.preset
            if isinstance(preset, str) and preset.endswith(".json"):
                try:
                    preset = json.loads(Path(preset).read_text())
                except (OSError, json.JSONDecodeError) as err:
                    raise InputError(
                        f"--preset {preset}: cannot read the model config JSON ({err})."
                    ) from err
            model = build_model(preset)
        if self.cfg.interaction.box_prob > 0 and not getattr(model.config, "box_embeddings", False):
            raise InputError("--box-prob needs a model with box embeddings (ModelConfig.box_embeddings).")
        model.train()
        return model.to(self.device)

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` and ``model.pt`` atomically (rank 0 only; call it on every rank: the
        RNG states and data positions of all ranks are gathered into rank 0's checkpoint)."""
        mine = {"rng": _rng_state(self.step_module.rng, self.sampler), "samples": self.sampler.count}
        if self.info.distributed:
            import torch.distributed as dist

            ranks: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if not self.info.is_main:
            return
        state = {
            "format": CKPT_FORMAT,
            "model_config": self.model.config.to_dict(),
            "model_state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": self.step,
            "elapsed_s": self.elapsed(),
            "ranks": ranks,  # per rank: RNG states (torch, sampler, clicks) and samples drawn
            "world_size": self.info.world_size,
            "train_config": self.cfg.to_dict(),
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)
        self.export(self.out / "model.pt")
        logger.info("checkpoint at step %d written to %s", self.step, self.ckpt_path)

    def export(self, path: Path, half: bool = False) -> None:
        """Save the current weights with :func:`seganypet.build.save_model` (+ training metadata)."""
        from seganypet.build import save_model

        model = self.model
        if self.cfg.interaction.box_prob > 0 and not model.config.supports_boxes:
            model.config = model.config.replace(supports_boxes=True)
        meta = {
            "training": {
                "steps": self.step,
                "wall_time_s": round(self.elapsed(), 1),
                "store": str(Path(self.cfg.store).resolve()),
                "train_cases": len(self.store.split("train")),
                "val_cases": len(self.val_ids),
                "config": self.cfg.to_dict(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "last_validation": self.history[-1] if self.history else None,
            },
            **self.cfg.metadata,
        }
        if half:
            import copy

            model = copy.deepcopy(model).half()
        save_model(model, path, metadata=meta)

    def load_checkpoint(self) -> None:
        try:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt file
            raise CheckpointError(f"{self.ckpt_path}: cannot read the training checkpoint ({err}).") from err
        if state.get("format") != CKPT_FORMAT:
            raise CheckpointError(f"{self.ckpt_path} is not a seganypet training checkpoint.")
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        ranks = state["ranks"]
        if len(ranks) == self.info.world_size:
            _set_rng_state(ranks[self.info.rank]["rng"], self.step_module.rng, self.sampler)
        else:  # another world size: new shards, fresh streams derived from the step
            logger.warning(
                "resuming a %d-process run with %d processes: data order differs",
                len(ranks),
                self.info.world_size,
            )
            self.sampler.rng = np.random.default_rng([self.cfg.seed, self.info.rank, self.step])
            self.step_module.rng = np.random.default_rng([self.cfg.seed, self.info.rank, self.step, 1])
        self._truncate_logs()
        logger.info("resumed from %s at step %d", self.ckpt_path, self.step)

    def _truncate_logs(self) -> None:
        """Drop metric rows written after the checkpoint (they are recomputed identically)."""
        if not self.info.is_main:
            return
        for name in ("metrics.csv", "val.csv"):
            path = self.out / name
            if path.is_file():
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
                fields = list(rows[0].keys()) if rows else None
                rows = [r for r in rows if int(r["step"]) <= self.step]
                with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                    if fields:
                        w = csv.DictWriter(f, fieldnames=fields)
                        w.writeheader()
                        w.writerows(rows)
        path = self.out / "metrics.jsonl"
        if path.is_file():
            lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(ln + "\n" for ln in lines))

    # ------------------------------------------------------------------ logging
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _append_csv(self, name: str, row: dict[str, Any], fields: list[str]) -> None:
        path = self.out / name
        new = not path.is_file() or path.stat().st_size == 0
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _log_metrics(self, row: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        self._append_csv("metrics.csv", row, _METRIC_FIELDS)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def run_validation(self) -> dict[str, Any] | None:
        if not self.info.is_main or not self.val_items:
            return None
        t = time.perf_counter()
        res = validate(self.model, self.val_sampler, self.val_items, self.cfg.val_clicks, self.device)
        row: dict[str, Any] = {"step": self.step}
        for kind, d in res["dice"].items():
            for n in (1, 3, 5):
                if n in d:
                    row[f"{kind}_dice@{n}"] = round(d[n], 4)
        row["val_s"] = round(time.perf_counter() - t, 1)
        fields = ["step"] + [f"{k}_dice@{n}" for k in ("organ", "lesion") for n in (1, 3, 5)] + ["val_s"]
        self._append_csv("val.csv", row, fields)
        self.history.append(row)
        logger.info("validation at step %d: %s", self.step, row)
        return row

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict[str, Any]:
        """One optimiser step (``accum`` micro-batches); returns the logged metrics row."""
        cfg = self.cfg
        t = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        stats_sum: dict[str, float] = {}
        loss_sum = 0.0
        for micro in range(cfg.accum):
            batch = self.sampler.batch(cfg.batch_size)
            image = torch.from_numpy(batch["image"]).to(self.device)
            target = torch.from_numpy(batch["target"]).to(self.device)
            sync = micro == cfg.accum - 1 or not self.info.distributed
            ctx = self.ddp.no_sync() if not sync else _nullcontext()
            with ctx:
                with torch.autocast(
                    self.device.split(":")[0],
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    loss, stats = self.ddp(image, target)
                loss = loss / cfg.accum
                if self.scaler:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            loss_sum += float(loss.detach())
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v / cfg.accum
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        lr = next(g["lr"] for g in self.optimizer.param_groups if g.get("name", "").startswith("encoder"))
        self.scheduler.step()
        self.step += 1
        dt = time.perf_counter() - t
        return {
            "step": self.step,
            "loss": round(loss_sum, 6),
            "seg_loss": round(stats_sum.get("seg_loss", 0.0), 6),
            "cpcl": round(stats_sum.get("cpcl", 0.0), 6),
            "cpcl_confident": round(stats_sum.get("cpcl_confident", 0.0), 4),
            "lr": lr,
            "grad_norm": round(float(gnorm), 4),
            "samples_per_s": round(cfg.batch_size * cfg.accum * self.info.world_size / dt, 4),
            "elapsed_s": round(self.elapsed(), 1),
            "loss_exact": loss_sum,
            "grad_norm_exact": float(gnorm),
        }

    def _attach_log(self) -> None:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(self.out / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler.setLevel(logging.INFO)
            root = logging.getLogger("seganypet")
            root.addHandler(handler)
            if root.level == logging.NOTSET or root.level > logging.INFO:
                root.setLevel(logging.INFO)
            self._log_handler = handler

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("seganypet").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or ``max_minutes``); returns a summary dict."""
        cfg = self.cfg
        self._attach_log()
        try:
            if self.resume:
                if not self.ckpt_path.is_file():
                    raise InputError(f"--resume: no checkpoint at {self.ckpt_path}.")
                self.load_checkpoint()
            elif self.info.is_main and self.ckpt_path.is_file():
                raise InputError(f"{self.out} already holds a checkpoint; use --resume or another --out.")
            if self.info.is_main:
                (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
                logger.info(
                    "training %s on %d train cases (rank shard %d), %d val objects, device %s, world %d",
                    self.model.config.name or "custom",
                    len(self.store.split("train")),
                    len(self.shard),
                    len(self.val_items),
                    self.device,
                    self.info.world_size,
                )
            self._t0 = time.perf_counter()
            start = self.step
            losses: list[float] = []
            grad_norms: list[float] = []
            stopped_early = False
            for _ in progress(
                range(start, cfg.steps), desc="train", unit="step", disable=not self.info.is_main
            ):
                row = self.train_step()
                losses.append(row.pop("loss_exact"))
                grad_norms.append(row.pop("grad_norm_exact"))
                self._log_metrics(row)
                if self.step % max(1, cfg.val_every) == 0 or self.step == cfg.steps:
                    self.run_validation()
                    tdist.barrier(self.info)
                out_of_time = (
                    cfg.max_minutes is not None and self.elapsed_since_start() > cfg.max_minutes * 60
                )
                out_of_time = tdist.any_flag(out_of_time, self.info)
                if self.step % max(1, cfg.ckpt_every) == 0 or self.step == cfg.steps or out_of_time:
                    self.save_checkpoint()
                    tdist.barrier(self.info)
                if out_of_time:
                    stopped_early = True
                    logger.info("stopping at step %d: --max-minutes %.1f reached", self.step, cfg.max_minutes)
                    break
            return {
                "step": self.step,
                "losses": losses,
                "grad_norms": grad_norms,
                "stopped_early": stopped_early,
                "rank": self.info.rank,
                "elapsed_s": self.elapsed(),
                "validation": self.history[-1] if self.history else None,
            }
        finally:
            self._detach_log()

    def elapsed_since_start(self) -> float:
        return time.perf_counter() - self._t0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run a training job (see :class:`Trainer`); under torchrun every rank calls this."""
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run()
    finally:
        tdist.cleanup(trainer.info)


def threads_from_env(default: int | None = None) -> None:
    """Honour OMP_NUM_THREADS for torch's intra-op pool (torch reads it too; this makes it explicit)."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit():
        torch.set_num_threads(int(n))
    elif default:
        torch.set_num_threads(default)
