"""The image path: a ViT (transformers) with LoRA on its attention projections.

The same ``SlotModel`` serves images: with ``model.base: tiny-vit`` (or a
local ViT folder) its forward takes ``pixel_values`` and mean-pools the
patch tokens.  A plan's ``query``/``value`` targets resolve to the ViT's
``q_proj``/``v_proj`` (see ``model.resolve_targets``), the paper's choice.

No pretrained ViT is available offline, so "tiny-vit" is a tiny random
config sized for scikit-learn's 8x8 grey ``load_digits`` images: it proves
the path end to end, not the paper's CIFAR numbers.  torchvision and timm are
not used (torchvision cannot be imported with the CPU torch here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fltac_secure.errors import DataError
from fltac_secure.learning.train import EncodedDataset

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def tiny_vit_config(image_size: int = 8, patch_size: int = 2, num_channels: int = 1) -> PretrainedConfig:
    """A 2-layer, width-32 ViT for small grey images (16 patches of 2x2 at 8x8)."""
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=num_channels, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def encode_images(images: np.ndarray, labels: np.ndarray, *, task: str = "", label_offset: int = 0,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> EncodedDataset:
    """Images ``(n, H, W)`` or ``(n, C, H, W)`` scaled from ``value_range`` to [-1, 1], as pixel_values."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise DataError(f"images must have shape (n, H, W) or (n, C, H, W) with n > 0, got {arr.shape}")
    lo, hi = value_range
    if not hi > lo:
        raise DataError(f"value_range {value_range} must have hi > lo")
    pixels = torch.from_numpy(((arr - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64) + int(label_offset))
    return EncodedDataset(features={"pixel_values": pixels}, labels=y, task=task)


def digits_split(*, test_fraction: float = 0.25, seed: int = 0) -> tuple[EncodedDataset, EncodedDataset]:
    """scikit-learn's digits (1,797 8x8 grey images, 10 classes) as a stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.images, digits.target, test_size=test_fraction,
                                              random_state=seed, stratify=digits.target)
    return (encode_images(x_tr, y_tr, task="digits", value_range=(0.0, 16.0)),
            encode_images(x_te, y_te, task="digits", value_range=(0.0, 16.0)))
