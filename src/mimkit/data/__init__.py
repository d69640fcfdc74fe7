"""Data: IDX files and image folders as uint8 datasets, a resumable sharded batch loader, and the batch
augmentations that run on the device.

    cfg = DataConfig(source="fashion_mnist")
    train = build_dataset(cfg, "train")                     # uint8 [60000, 1, 28, 28] in memory
    loader = build_loader(train, batch_size=256, seed=0)    # (uint8 [256, 1, 28, 28], int64 [256])
    augment = build_augment(cfg, train)                     # on the device: -> normalised float
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            x = augment(images.to(device))
"""

from mimkit.data.config import DataConfig
from mimkit.data.datasets import (
    FASHION_MNIST_CLASSES,
    ImageDataset,
    build_dataset,
)
from mimkit.data.idx import load_idx, read_idx
from mimkit.data.images import IMAGE_EXTENSIONS, UnreadableImageError, decode_image
from mimkit.data.loader import BatchLoader, build_loader
from mimkit.data.stats import channel_stats
from mimkit.data.transforms import (
    EvalTransform,
    PretrainAugment,
    build_augment,
    build_eval_transform,
    denormalize,
    normalize,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "BatchLoader",
    "DataConfig",
    "EvalTransform",
    "ImageDataset",
    "PretrainAugment",
    "UnreadableImageError",
    "build_augment",
    "build_dataset",
    "build_eval_transform",
    "build_loader",
    "channel_stats",
    "decode_image",
    "denormalize",
    "load_idx",
    "normalize",
    "read_idx",
]
