"""Image decoding and the paper's augmentation, in plain NumPy and Pillow.

Pipeline (Krizhevsky et al. 2012, section 4.1; docs/ARCHITECTURE.md, the paper's recipe):

1. ``load_image``: decode any Pillow-readable file, convert it to 8-bit RGB, rescale the
   shorter side to ``resize`` (256) and keep the centre ``resize`` x ``resize`` square.
2. Training: a random ``crop`` x ``crop`` patch (227), mirrored with probability 1/2
   (``random_crop_flip``), plus PCA colour noise (``pca_color_noise``).
   Evaluation: the centre crop (``center_crop``) or ten crops (``ten_crops``).
3. Normalisation (see ``pyalexnet.data.loader``): ``x = pixel/255 + pca_noise - mean01``.

Images are HWC arrays: uint8 straight from the decoder, float32 in [0, 1] once scaled.
Crops are views where slicing allows it; copy them if you keep them.
"""
from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

# Eigen-decomposition of the RGB pixel covariance of ImageNet (RGB in [0, 1]), the values
# used by fb.resnet.torch and most re-implementations. Columns of IMAGENET_EIGVEC are the
# eigenvectors p_i, IMAGENET_EIGVAL the eigenvalues lambda_i.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]])
# Per-channel ImageNet mean (RGB in [0, 1]), for when no training-set mean is computed.
IMAGENET_MEAN01 = np.array([0.485, 0.456, 0.406], dtype=np.float32)

# Transparent pixels are laid over white: transparent images (logos, product shots) are
# made to be seen on a white page, and their hidden colour values are often garbage.
ALPHA_BACKGROUND = (255, 255, 255)


# Pixels an image may need decoded (after a JPEG's reduced-size decoding): 3 bytes each.
MAX_DECODED_PIXELS = 64_000_000


class UnreadableImageError(OSError):
    """A file that Pillow cannot decode (corrupt, truncated, not an image, odd mode)."""


def load_image(path, resize=256):
    """Decode ``path`` to a uint8 HWC RGB array of shape (resize, resize, 3).

    Any Pillow mode is accepted (1, L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F, ...);
    EXIF orientation is applied. The shorter side is rescaled to ``resize`` and the centre
    square kept (the paper's "rescale to 256, crop the central 256x256 patch").
    ``resize=None`` keeps the native size. Raises UnreadableImageError for anything that
    cannot be decoded, and for images that would decode to more than MAX_DECODED_PIXELS.
    """
    try:
        with warnings.catch_warnings():
            # The size guard below replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if resize is not None and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger
                # than needed: several times faster, and the result stays >= resize.
                img.draft("RGB" if img.mode == "RGB" else None, (resize, resize))
            w, h = img.size
            if w * h > MAX_DECODED_PIXELS:
                raise UnreadableImageError(
                    f"cannot read image {path}: {w}x{h} is {w * h / 1e6:.0f} megapixels to decode, "
                    f"more than the limit of {MAX_DECODED_PIXELS / 1e6:.0f} (JPEGs are decoded "
                    "at reduced size and rarely reach it; scale the image down first)")
            img.load()
            img = to_rgb(_upright(img))
            if resize is not None:
                img = rescale_center(img, resize)
            return np.asarray(img, dtype=np.uint8)
    except UnreadableImageError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError...
        raise UnreadableImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


def _upright(img):
    """Apply the EXIF orientation; broken EXIF data is ignored rather than losing the image."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def to_rgb(img):
    """Convert a Pillow image of any mode to 8-bit RGB.

    Pillow's own convert() clips 16-bit and 32-bit values at 255 instead of scaling them,
    so those modes are scaled here: I;16 by 1/257; I by 1/257 when its values exceed 255;
    F as [0, 1] when its maximum is <= 1, else as [0, 255].
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def rescale_center(img, resize):
    """Shorter side to ``resize``, then the centre resize x resize square (Pillow image).

    Done as one resample of the centre square of the source (Pillow's ``box``), which is
    the same as rescaling then cropping but touches fewer pixels. Bilinear with Pillow's
    area-aware support, so downscaling is antialiased.
    """
    w, h = img.size
    if (w, h) == (resize, resize):
        return img
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return img.resize((resize, resize), Image.BILINEAR, box=(left, top, left + side, top + side))


def _check_crop(shape, crop):
    h, w = shape[0], shape[1]
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the image ({h}x{w})")
    return h, w


def random_crop_params(shape, crop, rng, flip=True):
    """(top, left, mirrored) of a uniformly random crop x crop patch of an image of
    ``shape`` (H, W, ...). Draws top, then left, then (if ``flip``) the coin for mirroring."""
    h, w = _check_crop(shape, crop)
    top = int(rng.integers(0, h - crop + 1))
    left = int(rng.integers(0, w - crop + 1))
    mirrored = bool(rng.random() < 0.5) if flip else False
    return top, left, mirrored


def crop_flip(img, top, left, crop, mirrored):
    """The crop x crop patch at (top, left), mirrored left-right if ``mirrored`` (a view)."""
    patch = img[top:top + crop, left:left + crop]
    return patch[:, ::-1] if mirrored else patch


def random_crop_flip(img, crop, rng, flip=True):
    """A random crop x crop patch of ``img``, mirrored with probability 1/2 (a view)."""
    top, left, mirrored = random_crop_params(img.shape, crop, rng, flip)
    return crop_flip(img, top, left, crop, mirrored)


def center_offsets(img, crop):
    """(top, left) of the centre crop x crop patch."""
    h, w = _check_crop(img.shape, crop)
    return (h - crop) // 2, (w - crop) // 2


def center_crop(img, crop):
    """The centre crop x crop patch of ``img`` (a view)."""
    top, left = center_offsets(img, crop)
    return img[top:top + crop, left:left + crop]


def ten_crops(img, crop):
    """The paper's ten test patches, shape (10, crop, crop, C): top-left, top-right,
    bottom-left, bottom-right, centre, then the same five mirrored left-right."""
    h, w = _check_crop(img.shape, crop)
    top, left = center_offsets(img, crop)
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    five = np.stack([img[y:y + crop, x:x + crop] for y, x in corners])
    return np.concatenate([five, five[:, :, ::-1]])


def pca_color_offset(rng, std=0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
    """The RGB offset sum_i alpha_i lambda_i p_i with alpha_i ~ N(0, std), for RGB in [0, 1].

    One draw of three normals per image; the same offset is added to every pixel.
    """
    alpha = rng.normal(0.0, std, size=3)
    return (np.asarray(eigvec, dtype=np.float64) @ (alpha * np.asarray(eigval))).astype(np.float32)


def pca_color_noise(img, rng, std=0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
    """``img`` (HWC float, RGB in [0, 1]) plus PCA colour noise (a new float32 array)."""
    return np.asarray(img, dtype=np.float32) + pca_color_offset(rng, std, eigval, eigvec)


def to_chw_float(img, mean01=None, offset=None, out=None):
    """HWC uint8 (or (..., H, W, C) batch of crops) to CHW float32:
    ``pixel/255 + offset - mean01``, written into ``out`` if given.

    ``offset`` is a per-channel addition (the PCA colour noise); ``mean01`` the per-channel
    mean in [0, 1]. Both are (3,) arrays or None.
    """
    chw = np.moveaxis(np.asarray(img), -1, -3)
    if out is None:
        out = np.empty(chw.shape, dtype=np.float32)
    np.multiply(chw, np.float32(1.0 / 255.0), out=out, casting="unsafe")
    shift = np.zeros(3, dtype=np.float32)
    if offset is not None:
        shift += offset
    if mean01 is not None:
        shift -= mean01
    if shift.any():
        out += shift[:, None, None]
    return out
