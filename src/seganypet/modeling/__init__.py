"""Pure ``nn.Module`` code of the SAM-Med3D / SegAnyPET network (no I/O). See docs/model.md."""

from seganypet.modeling.config import ModelConfig
from seganypet.modeling.image_encoder import ImageEncoderViT3D
from seganypet.modeling.mask_decoder import MaskDecoder3D
from seganypet.modeling.normalization import normalize_crop
from seganypet.modeling.prompt_encoder import PromptEncoder3D
from seganypet.modeling.sam3d import EXTENSION_KEYS, Sam3D, bf16_native

__all__ = [
    "EXTENSION_KEYS",
    "ImageEncoderViT3D",
    "MaskDecoder3D",
    "ModelConfig",
    "PromptEncoder3D",
    "Sam3D",
    "bf16_native",
    "normalize_crop",
]
