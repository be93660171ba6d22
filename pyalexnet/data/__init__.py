"""Data for pyalexnet: ImageNet-style folders, CIFAR-10, a built-in generated dataset, the
paper's augmentation, and a multi-process batch loader.

    from pyalexnet.data import ImageFolder, Loader, compute_channel_mean, ensure_builtin_dataset

    root = ensure_builtin_dataset()                      # or an ImageNet folder
    train_set = ImageFolder(root / "train")
    val_set = ImageFolder(root / "val", classes=train_set.classes)
    mean = compute_channel_mean(train_set, resize=40)
    with Loader(train_set, 128, train=True, crop=32, resize=40, mean=mean) as loader:
        for x, labels in loader:                         # x = pixel/255 + pca noise - mean
            ...

See ``pyalexnet.data.loader`` for the normalisation convention.
"""
from .augment import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN01, UnreadableImageError,
                      center_crop, crop_flip, load_image, pca_color_noise, pca_color_offset,
                      random_crop_flip, random_crop_params, ten_crops, to_chw_float)
from .builtin import ensure_builtin_dataset
from .cifar import cifar10_dataset, load_cifar10
from .folders import IMAGE_EXTENSIONS, ArrayDataset, ImageFolder
from .loader import Loader, compute_channel_mean
from .sources import describe_source, make_loader, open_split, source_from_args

__all__ = [
    "ImageFolder", "ArrayDataset", "IMAGE_EXTENSIONS", "load_cifar10", "cifar10_dataset",
    "ensure_builtin_dataset", "Loader", "compute_channel_mean", "load_image",
    "UnreadableImageError", "random_crop_params", "crop_flip", "random_crop_flip",
    "center_crop", "ten_crops", "pca_color_offset", "pca_color_noise", "to_chw_float",
    "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "IMAGENET_MEAN01",
    "source_from_args", "describe_source", "open_split", "make_loader",
]
