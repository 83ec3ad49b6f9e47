"""Named model presets, building, and safe checkpoint loading / saving.

- :data:`PRESETS`: ``vit_b_ori`` (the published SegAnyPET / SAM-Med3D-turbo size), ``small`` (our
  CPU model), ``tiny`` (tests), ``reference_small`` (the parity fixture's configuration).
- :func:`build_model` -> an untrained :class:`~seganypet.modeling.Sam3D`.
- :func:`load_model` -> a trained model in eval mode, from ``"default"`` (the shipped weights) or a
  checkpoint path in the published formats or ours. Loading is safe by default: only tensors, plain
  containers and ``argparse.Namespace`` are unpickled; anything else raises
  :class:`~seganypet.errors.UnsafeCheckpointError` unless ``trust_checkpoint=True``.
- :func:`save_model` writes our format: ``{"format": "seganypet-model", "format_version": 1,
  "config": dict, "state_dict": ..., "metadata": dict, "seganypet_version": str, "saved_at": str}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import logging
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from seganypet.errors import CheckpointError, ModelError, UnsafeCheckpointError
from seganypet.modeling import EXTENSION_KEYS, ModelConfig, Sam3D
from seganypet.utils import atomic_path

logger = logging.getLogger("seganypet.build")

FORMAT_MARKER = "seganypet-model"
FORMAT_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.pt"
#: buffers some published variants carry that are not part of the network's state
IGNORED_KEYS = ("pixel_mean", "pixel_std")

PRESETS: dict[str, ModelConfig] = {
    # The published network (SegAnyPET v1/v2/lesion, SAM-Med3D-turbo): exactly the 324 published keys.
    "vit_b_ori": ModelConfig(name="vit_b_ori", box_embeddings=False),
    # The parity fixture in ../shared/reference (config.json), published key layout.
    "reference_small": ModelConfig(
        name="reference_small",
        encoder_embed_dim=192,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        prompt_embed_dim=96,
        box_embeddings=False,
    ),
    # Our CPU model: 8³ tokens, so global attention everywhere (no padded windows at all).
    "small": ModelConfig(
        name="small",
        encoder_embed_dim=192,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(0, 1, 2, 3),
        prompt_embed_dim=96,
        decoder_transformer_mlp_dim=512,
        box_embeddings=True,
        dense_pe_axis_quirk=False,
    ),
    # Very small, for tests: one windowed (padded) block and one global block.
    "tiny": ModelConfig(
        name="tiny",
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        prompt_embed_dim=48,
        mask_in_chans=8,
        iou_head_hidden_dim=32,
        decoder_transformer_mlp_dim=64,
        box_embeddings=True,
        dense_pe_axis_quirk=False,
    ),
}


def get_config(preset_or_config: str | ModelConfig | Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Resolve a preset name, a :class:`ModelConfig` or a config dict, then apply ``overrides``."""
    if isinstance(preset_or_config, ModelConfig):
        config = preset_or_config
    elif isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ModelError(
                f"Unknown model preset {preset_or_config!r}; choose one of {', '.join(sorted(PRESETS))}."
            )
        config = PRESETS[preset_or_config]
    elif isinstance(preset_or_config, Mapping):
        config = ModelConfig.from_dict(dict(preset_or_config))
    else:
        raise ModelError(f"Cannot build a model from {type(preset_or_config).__name__}.")
    return config.replace(**overrides) if overrides else config


def build_model(preset_or_config: str | ModelConfig | Mapping[str, Any] = "small", **overrides: Any) -> Sam3D:
    """A randomly initialised (untrained) model, in training mode, on the CPU.

    ``overrides`` change config fields, e.g. ``build_model("vit_b_ori", box_embeddings=True)``.
    For trained weights use :func:`load_model`.
    """
    return Sam3D(get_config(preset_or_config, **overrides))


@functools.lru_cache(maxsize=16)
def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of a model with ``config`` (built on the meta device: no memory).
    Cached; do not modify the returned dict."""
    with torch.device("meta"):
        model = Sam3D(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# reading checkpoints
# --------------------------------------------------------------------------------------------


def _describe(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def read_checkpoint(path: str | os.PathLike[str], trust_checkpoint: bool = False) -> Any:
    """Unpickle a checkpoint file safely (``weights_only``; ``argparse.Namespace`` allowed).

    Raises :class:`CheckpointError` for a missing / unreadable / corrupt file and
    :class:`UnsafeCheckpointError` when it needs arbitrary code, unless ``trust_checkpoint`` (then it
    is loaded with full pickle, after a loud warning: only do this for files from a trusted source).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} is not a file.")
    if trust_checkpoint:
        msg = (
            f"Loading {path} with trust_checkpoint=True: full pickle, which can run arbitrary code. "
            "Only do this for checkpoints from a source you trust."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)
        logger.warning(msg)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
            raise CheckpointError(f"Checkpoint {path} cannot be read ({type(err).__name__}: {err}).") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text and ("global" in text.lower() or "Unsupported" in text):
            detail = next(
                (ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "GLOBAL" in ln), ""
            )
            raise UnsafeCheckpointError(
                f"Refusing to load {path}: it needs arbitrary code to unpickle"
                + (f" ({detail})" if detail else "")
                + ". Load it only if you trust its source, with trust_checkpoint=True "
                "(CLI: --trust-checkpoint)."
            ) from None
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated ({text.splitlines()[0]})."
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"Checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {first}."
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _plain(value: Any) -> Any:
    """JSON-able copy of published metadata (Namespace -> dict, tensors dropped)."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if not torch.is_tensor(v)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def split_checkpoint(
    obj: Any, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict | None, dict]:
    """``(state_dict, our config dict or None, metadata)`` from any supported checkpoint object.

    Published: ``{"model_state_dict": ..., "epoch", "args", ...}``, a bare state dict, keys prefixed
    ``module.`` (DDP) or ``_orig_mod.`` (torch.compile). Ours: see :func:`save_model`.
    """
    config = None
    metadata: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_MARKER:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has seganypet format version {version!r}; this version reads up to "
                f"{FORMAT_VERSION}. Update seganypet."
            )
        state, config = obj.get("state_dict"), obj.get("config")
        metadata = dict(obj.get("metadata") or {})
        for key in ("seganypet_version", "saved_at"):
            if key in obj:
                metadata.setdefault(key, obj[key])
        metadata["format"] = FORMAT_MARKER
        if not isinstance(config, Mapping):
            raise CheckpointError(f"{source} is a seganypet checkpoint without a config.")
        config = dict(config)
    elif isinstance(obj, Mapping) and "model_state_dict" in obj:
        state = obj["model_state_dict"]
        metadata = {
            k: _plain(v)
            for k, v in obj.items()
            if k not in ("model_state_dict", "optimizer_state_dict", "lr_scheduler_state_dict")
        }
        metadata["format"] = "published"
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("state_dict")):
        state = obj["state_dict"]
        metadata = {"format": "state_dict"}
    elif isinstance(obj, Mapping) and _is_state_dict(obj.get("model")):
        state = obj["model"]
        metadata = {"format": "state_dict"}
    else:
        state = obj
        metadata = {"format": "bare"}
    if not _is_state_dict(state):
        keys = list(obj)[:6] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{source} does not contain a model state dict"
            + (
                f" (top-level keys: {', '.join(map(str, keys))})"
                if keys
                else f" (it holds a {type(obj).__name__})"
            )
            + "."
        )
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        clean[key] = value
    return clean, config, metadata


def guess_preset(state: Mapping[str, torch.Tensor]) -> tuple[str, float]:
    """The preset whose key/shape table matches ``state`` best, and the fraction of its keys matched."""
    best, best_score = "", -1.0
    for name, config in PRESETS.items():
        shapes = expected_shapes(config.replace(box_embeddings=False))
        hits = sum(1 for k, s in shapes.items() if k in state and tuple(state[k].shape) == s)
        score = hits / max(len(shapes), len(state))
        if score > best_score:
            best, best_score = name, score
    return best, best_score


def _preset_hint(state: Mapping[str, torch.Tensor]) -> str:
    name, score = guess_preset(state)
    if score <= 0:
        return " It does not look like a SAM-Med3D / SegAnyPET network at all."
    return f" It looks most like preset {name!r} ({score:.0%} of keys and shapes match)."


def infer_config(state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """The architecture of a published-format state dict, from its tensor shapes.

    Embedding dims from ``pos_embed`` / ``neck``; depth from the block count; heads from the
    relative-position table width (head dim); global blocks are those whose tables have
    ``2·grid − 1`` rows, the window size comes from the others (``rows = 2·window − 1``). The
    decoder's head count is not visible in shapes and is taken as the published 8.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(
                f"Cannot infer the network from this checkpoint: key {key!r} is missing."
                + _preset_hint(state)
            )
        return tuple(state[key].shape)

    def count(prefix: str) -> int:
        idx = {int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)}
        return max(idx) + 1 if idx else 0

    pos = shape("image_encoder.pos_embed")
    patch = shape("image_encoder.patch_embed.proj.weight")
    embed, grid, patch_size = pos[-1], pos[1], patch[-1]
    depth = count("image_encoder.blocks.")
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_d")[1]
    global_idx, windows = [], set()
    for i in range(depth):
        rows = shape(f"image_encoder.blocks.{i}.attn.rel_pos_d")[0]
        if rows == 2 * grid - 1:
            global_idx.append(i)
        else:
            windows.add((rows + 1) // 2)
    if len(windows) > 1:
        raise CheckpointError(f"Checkpoint mixes window sizes {sorted(windows)}; not a supported network.")
    prompt = shape("image_encoder.neck.0.weight")[0]
    lin1 = shape("image_encoder.blocks.0.mlp.lin1.weight")[0]
    t2i = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    try:
        return ModelConfig(
            image_size=grid * patch_size,
            patch_size=patch_size,
            encoder_embed_dim=embed,
            encoder_depth=depth,
            encoder_num_heads=embed // head_dim,
            encoder_mlp_ratio=lin1 / embed,
            encoder_global_attn_indexes=tuple(global_idx),
            encoder_window_size=windows.pop() if windows else 14,
            prompt_embed_dim=prompt,
            mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
            num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
            iou_head_depth=count("mask_decoder.iou_prediction_head.layers."),
            iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
            decoder_transformer_depth=count("mask_decoder.transformer.layers."),
            decoder_transformer_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
            decoder_transformer_num_heads=8,
            decoder_attention_downsample_rate=max(1, prompt // t2i),
            box_embeddings=EXTENSION_KEYS[0] in state,
        )
    except ModelError as err:
        raise CheckpointError(
            f"Checkpoint shapes do not form a valid network: {err}" + _preset_hint(state)
        ) from None


def _check_keys(
    state: Mapping[str, torch.Tensor], model: Sam3D, source: str, allow_missing: tuple[str, ...]
) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state and k not in allow_missing)
    unexpected = sorted(k for k in state if k not in expected and k not in IGNORED_KEYS)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    )
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_describe(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} mis-shaped key(s): {_describe(wrong, 3)}")
    raise CheckpointError(
        f"{source} does not match the network ({'; '.join(parts)}). Nothing was loaded." + _preset_hint(state)
    )


def model_from_checkpoint(obj: Any, source: str = "checkpoint") -> Sam3D:
    """Build and fill a model from an unpickled checkpoint object (all or nothing)."""
    state, config_dict, metadata = split_checkpoint(obj, source)
    if config_dict is not None:
        try:
            config = ModelConfig.from_dict(config_dict)
        except ModelError as err:
            raise CheckpointError(f"{source} has an invalid config: {err}") from None
        allow_missing: tuple[str, ...] = ()
    else:
        # Published weights: add the (untrained) box extension; they never say boxes were trained.
        try:
            config = infer_config(state).replace(box_embeddings=True, supports_boxes=False)
        except CheckpointError:
            # a damaged checkpoint of a known network: compare with that preset to list the damage
            guess, score = guess_preset(state)
            if score < 0.5:
                raise
            config = PRESETS[guess].replace(box_embeddings=True)
        allow_missing = EXTENSION_KEYS
        for name, preset in PRESETS.items():
            if config.replace(box_embeddings=False, supports_boxes=False) == preset:
                config = config.replace(name=name)
                break
    model = Sam3D(config)
    _check_keys(state, model, source, allow_missing)
    incompatible = model.load_state_dict(
        {k: v for k, v in state.items() if k not in IGNORED_KEYS}, strict=False
    )
    if incompatible.unexpected_keys or set(incompatible.missing_keys) - set(allow_missing):
        raise CheckpointError(f"{source} could not be loaded completely.")  # pragma: no cover - checked above
    model.metadata = metadata
    return model


def load_model(
    name_or_path: str | os.PathLike[str] = "default",
    device: str | torch.device = "cpu",
    *,
    trust_checkpoint: bool = False,
    fast_window: bool = True,
) -> Sam3D:
    """A trained model in eval mode on ``device``.

    ``name_or_path``: ``"default"`` (the shipped weights, ``seganypet/weights/default.pt``) or a
    checkpoint path (published SegAnyPET / SAM-Med3D formats, or ours from :func:`save_model`).
    Preset names are refused (they have no weights: use :func:`build_model`).
    ``trust_checkpoint=True`` allows full pickle loading — it can execute arbitrary code; use it only
    for files from a source you trust. ``fast_window`` picks the encoder implementation (same output).
    """
    if isinstance(name_or_path, str) and name_or_path == "default":
        path = DEFAULT_WEIGHTS
        if not path.is_file():
            raise ModelError(
                f"The default model is not installed ({path} is missing); pass --model PATH to a "
                "checkpoint (SegAnyPET .pth or a seganypet .pt)."
            )
    else:
        path = Path(name_or_path)
        if isinstance(name_or_path, str) and name_or_path in PRESETS and not path.exists():
            raise ModelError(
                f"{name_or_path!r} is a preset name, not trained weights; give a checkpoint path, or "
                f"use build_model({name_or_path!r}) for an untrained network."
            )
    obj = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    model = model_from_checkpoint(obj, source=f"Checkpoint {path}")
    model.metadata["path"] = str(path)
    model.fast_window = fast_window
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise ModelError(f"Cannot move the model to device {device!r}: {str(err).splitlines()[0]}") from None
    logger.info(
        "loaded %s (%s) from %s", model.config.name or "model", model.config.num_parameters_hint(), path
    )
    return model.eval()


def save_model(
    model: Sam3D,
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
    *,
    format: str = "seganypet",  # noqa: A002 - public keyword
) -> Path:
    """Write ``model`` to ``path`` atomically and return the path.

    ``format="seganypet"`` (default): config + weights + ``metadata`` (JSON-able: training data,
    steps, whether boxes were trained, ...), loadable with ``weights_only``. ``format="published"``:
    ``{"model_state_dict": ...}`` without our extension keys, loadable by the published code.
    """
    if not isinstance(model, Sam3D):
        raise ModelError(f"save_model needs a Sam3D model, got {type(model).__name__}.")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ModelError(f"Model metadata must be JSON-serialisable: {err}.") from None
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if format == "seganypet":
        from seganypet import __version__

        obj: dict[str, Any] = {
            "format": FORMAT_MARKER,
            "format_version": FORMAT_VERSION,
            "seganypet_version": __version__,
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": model.config.to_dict(),
            "state_dict": state,
            "metadata": meta,
        }
    elif format == "published":
        obj = {"model_state_dict": {k: v for k, v in state.items() if k not in EXTENSION_KEYS}}
    else:
        raise ModelError(f"Unknown checkpoint format {format!r} (use 'seganypet' or 'published').")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path
