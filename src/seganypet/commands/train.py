"""``seganypet train``: interactive training of the network on a prepared store (torchrun-aware)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

HELP = "Train (or fine-tune) the promptable network on a prepared store; run under torchrun for DDP."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("store", help="store folder made by `seganypet prepare`")
    p.add_argument("-o", "--out", required=True, help="output folder (checkpoint.pt, model.pt, logs)")
    p.add_argument(
        "--preset",
        default="small",
        help="model preset (tiny, small, vit_b_ori) or a ModelConfig JSON file, when not --init",
    )
    p.add_argument("--init", help="start from these weights (published .pth or ours) to fine-tune")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation (micro-batches per step)")
    p.add_argument("--lr", type=float, default=3e-4, help="image-encoder learning rate")
    p.add_argument(
        "--decoder-lr-factor",
        type=float,
        default=0.1,
        help="prompt encoder + mask decoder LR = lr x this (published 0.1)",
    )
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps before the cosine decay")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "none", "bf16", "fp16"],
        help="autocast (auto: bf16 on GPU, off on CPU)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-clicks", type=int, default=5, help="prompt iterations per sample")
    p.add_argument("--click-mode", default="random", choices=["random", "center"])
    p.add_argument(
        "--center-prob",
        type=float,
        default=0.0,
        help="with --click-mode random: probability of a distance-transform-centre click",
    )
    p.add_argument("--no-mask-only", action="store_true", help="no mask-only iterations")
    p.add_argument("--cpcl-prompts", type=int, default=3, help="prompt sets for CPCL (<2: CPCL off)")
    p.add_argument("--cpcl-weight", type=float, default=0.1)
    p.add_argument(
        "--cpcl-tau", type=float, default=0.01, help="variance threshold of the CPCL confidence mask"
    )
    p.add_argument("--box-prob", type=float, default=0.0, help="probability of a box prompt (trains boxes)")
    p.add_argument(
        "--loss-size",
        type=int,
        default=None,
        help="grid edge of the loss (default: crop size 128; 64 is ~8x cheaper on CPU)",
    )
    p.add_argument(
        "--lesion-weight",
        type=float,
        default=1.0,
        help="sampling weight of lesion objects relative to organs within a case",
    )
    p.add_argument("--val-every", type=int, default=100, help="validation every N steps")
    p.add_argument("--val-objects", type=int, default=20, help="validation objects (fixed subset)")
    p.add_argument("--ckpt-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop with a checkpoint after this wall time"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")


def _command_line() -> str:
    """The command line that started this process (for the exported model's metadata)."""
    if "train" in sys.argv[1:]:
        return "seganypet " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return "seganypet.training.trainer.train (Python API)"


def build_config(args: argparse.Namespace):  # -> TrainConfig
    from seganypet.training.loop import InteractionConfig
    from seganypet.training.trainer import TrainConfig

    inter = InteractionConfig(
        num_clicks=args.num_clicks,
        click_mode=args.click_mode,
        center_prob=args.center_prob,
        mask_only=not args.no_mask_only,
        cpcl_prompts=args.cpcl_prompts,
        cpcl_weight=args.cpcl_weight,
        cpcl_tau=args.cpcl_tau,
        box_prob=args.box_prob,
        loss_size=args.loss_size,
    )
    kw = None if args.lesion_weight == 1.0 else {"organ": 1.0, "lesion": args.lesion_weight}
    return TrainConfig(
        store=args.store,
        out=args.out,
        preset=args.preset,
        init=args.init,
        steps=args.steps or 1000,
        batch_size=args.batch_size,
        accum=args.accum,
        lr=args.lr,
        decoder_lr_factor=args.decoder_lr_factor,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        clip=args.clip,
        amp=args.amp,
        device=args.device,
        seed=args.seed,
        interaction=inter,
        kind_weights=kw,
        val_every=args.val_every,
        val_objects=args.val_objects,
        ckpt_every=args.ckpt_every,
        max_minutes=args.max_minutes,
        metadata={"command": _command_line()},
    )


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import torch

    from seganypet.errors import InputError
    from seganypet.training.trainer import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.resume:
        path = Path(args.out) / "train_config.json"
        if not path.is_file():
            raise InputError(f"--resume: {path} is missing; nothing to resume in {args.out}.")
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
        if args.steps:  # extend (or shorten) the run
            cfg.steps = args.steps
        if args.max_minutes is not None:
            cfg.max_minutes = args.max_minutes
    else:
        cfg = build_config(args)
    res = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if res["losses"]:
        print(
            f"step {res['step']}: loss {res['losses'][-1]:.4f} ({res['elapsed_s']:.0f} s in total); "
            f"weights in {Path(cfg.out) / 'model.pt'}"
        )
    if res.get("validation"):
        print("validation:", json.dumps(res["validation"]))
    return 0
