"""ImageNet-style image folders: ``root/<class>/<image>``; in-memory array datasets.

Both dataset classes follow the small protocol ``Loader`` needs: ``len(ds)``,
``ds.load(i, resize) -> (uint8 HWC RGB image, label)``, ``ds.describe(i)`` (a path or
name for error messages) and ``ds.classes``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .augment import load_image, rescale_center

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
LAYOUT = ("expected root/<class>/<image>, e.g. imagenet/train/n01440764/n01440764_10026.JPEG "
          "(one sub-folder per class; image extensions: " + " ".join(IMAGE_EXTENSIONS) + ")")
# Folder names that mean "this is the dataset root, not a split": pointing ImageFolder at
# imagenet/ instead of imagenet/train would otherwise give a silent 2-class dataset.
SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


def is_image_file(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder):
    """Image files below ``folder`` (any depth, symlinks followed), in sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


class ImageFolder:
    """root/<class>/<image files>; classes sorted by name -> label 0..C-1.

    Accepts .jpeg .jpg .png .bmp .ppm .gif .webp .tif .tiff (case-insensitive); other files
    and hidden entries are ignored; images may sit in nested folders below their class.
    ``classes`` fixes the class list (and so the labels), e.g. pass the training set's
    classes when opening the validation set; a class folder not in it is an error.
    """

    def __init__(self, root, classes=None):
        self.root = Path(root).expanduser()
        root = self.root
        if not root.exists():
            raise FileNotFoundError(f"image folder {root} does not exist; {LAYOUT}")
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder; {LAYOUT}")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            loose = [e.name for e in os.scandir(root) if e.is_file() and is_image_file(e.name)]
            if loose:
                raise ValueError(
                    f"{root} holds {len(loose)} images but no class folders; {LAYOUT}. "
                    "Move each class's images into its own sub-folder (for the raw ImageNet "
                    "validation set, sort val/*.JPEG into val/<wnid>/ with the ground-truth list)")
            raise ValueError(f"{root} is empty: no class folders found; {LAYOUT}")
        splits = [name for name in found if name.lower() in SPLIT_NAMES]
        if splits and any(d.is_dir() for name in splits for d in (root / name).iterdir()):
            raise ValueError(
                f"{root} looks like a dataset root holding the splits {splits}, not a split "
                f"of class folders: pass {root / splits[0]} instead; {LAYOUT}")
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{root} has class folders {unknown[:5]}"
                                 f"{' ...' if len(unknown) > 5 else ''} that are not in the "
                                 f"given class list of {len(classes)} classes")
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.samples = []
        empty = []
        for c in found:
            files = _images_under(root / c)
            if not files:
                empty.append(c)
            label = self.class_to_idx[c]
            self.samples.extend((f, label) for f in files)
        if not self.samples:
            raise ValueError(f"no images found under {root} in its {len(found)} class "
                             f"folders; {LAYOUT}")
        if empty:
            raise ValueError(f"class folders without images under {root}: {empty[:5]}"
                             f"{' ...' if len(empty) > 5 else ''} ({len(empty)} of {len(found)}); "
                             "remove them or add images, or labels would not mean what you think")
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]

    def load(self, i, resize=256):
        path, label = self.samples[i]
        return load_image(path, resize), label

    def describe(self, i):
        return self.samples[i][0]

    def __repr__(self):
        return f"ImageFolder({str(self.root)!r}: {len(self)} images, {len(self.classes)} classes)"


class ArrayDataset:
    """Images held in memory (e.g. CIFAR-10): uint8 (N, H, W, 3) RGB or (N, H, W) grey.

    ``load(i, resize)`` rescales (shorter side, centre square, like ``load_image``) only
    when ``resize`` is given and differs from the stored size.
    """

    def __init__(self, images, labels, classes=None):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0..255), got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(f"images must have shape (N, H, W, 3) or (N, H, W), got {images.shape}")
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ValueError("an ArrayDataset needs at least one image")
        if labels.min() < 0:
            raise ValueError("labels must be >= 0")
        self.images, self.targets = images, labels
        if classes is None:
            classes = [str(c) for c in range(labels.max() + 1)]
        self.classes = list(classes)
        if labels.max() >= len(self.classes):
            raise ValueError(f"label {labels.max()} but only {len(self.classes)} classes")

    @property
    def image_shape(self):
        return self.images.shape[1:3]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])

    def load(self, i, resize=None):
        img = self.images[i]
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if resize is not None and img.shape[:2] != (resize, resize):
            img = np.asarray(rescale_center(Image.fromarray(img), resize))
        return img, int(self.targets[i])

    def describe(self, i):
        return f"image {i} of the array dataset"

    def __repr__(self):
        return f"ArrayDataset({len(self)} images of {self.image_shape}, {len(self.classes)} classes)"
