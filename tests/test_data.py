"""Data pipeline: folders, CIFAR batches, the built-in dataset, augmentation, the Loader."""
import io
import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from pyalexnet.data import (IMAGENET_EIGVAL, IMAGENET_EIGVEC, ArrayDataset, ImageFolder, Loader,
                            UnreadableImageError, center_crop, compute_channel_mean, crop_flip,
                            ensure_builtin_dataset, load_cifar10, load_image, pca_color_noise,
                            random_crop_flip, random_crop_params, ten_crops)
from pyalexnet.data import builtin


def _save(path, img, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _corrupt_files(folder):
    """Garbage named .JPEG, a truncated JPEG and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "garbage.JPEG").write_bytes(b"this is not an image" * 10)
    buf = io.BytesIO()
    _rgb(64, 64, seed=9).save(buf, format="JPEG", quality=95)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    return [folder / n for n in ("garbage.JPEG", "truncated.jpg", "empty.png")]


@pytest.fixture
def small_folder(tmp_path):
    """Two classes of odd-sized images in several formats, plus three unreadable files."""
    root = tmp_path / "train"
    for i in range(7):
        _save(root / "b_dog" / f"d{i}.JPEG", _rgb(30 + i, 50, seed=i))
        _save(root / "a_cat" / f"c{i}.png", _rgb(45, 33 + i, seed=100 + i))
    bad = _corrupt_files(root / "a_cat")
    return root, bad


# ---------------------------------------------------------------- ImageFolder

def test_image_folder_discovers_sorted_classes_and_images(tmp_path):
    root = tmp_path / "train"
    _save(root / "zebra" / "1.JPEG", _rgb(8, 8))
    _save(root / "zebra" / "sub" / "2.Jpg", _rgb(8, 8))          # nested, odd case
    _save(root / "apple" / "3.webp", _rgb(8, 8))
    _save(root / "apple" / "4.TIFF", _rgb(8, 8))
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "apple" / ".hidden.jpg").write_bytes(b"")
    (root / ".git").mkdir()
    ds = ImageFolder(root)
    assert ds.classes == ["apple", "zebra"]
    assert len(ds) == 4
    assert [(p.rsplit("/", 1)[1], y) for p, y in ds.samples] == [
        ("3.webp", 0), ("4.TIFF", 0), ("1.JPEG", 1), ("2.Jpg", 1)]
    assert ds[2] == ds.samples[2]
    img, label = ds.load(0, resize=16)
    assert img.shape == (16, 16, 3) and label == 0
    # A fixed class list keeps the training labels when a split lacks a class.
    assert ImageFolder(root, classes=["apple", "mango", "zebra"]).samples[-1][1] == 2
    with pytest.raises(ValueError, match="not in the given class list"):
        ImageFolder(root, classes=["apple"])


def test_image_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*root/<class>/<image>"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        ImageFolder(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no class folders"):
        ImageFolder(tmp_path / "empty")
    _save(tmp_path / "flat" / "a.JPEG", _rgb(8, 8))
    with pytest.raises(ValueError, match="no class folders.*own sub-folder"):
        ImageFolder(tmp_path / "flat")
    _save(tmp_path / "imagenet" / "train" / "n01" / "a.JPEG", _rgb(8, 8))
    _save(tmp_path / "imagenet" / "val" / "n01" / "b.JPEG", _rgb(8, 8))
    with pytest.raises(ValueError, match="pass .*train instead"):
        ImageFolder(tmp_path / "imagenet")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        ImageFolder(tmp_path / "noimg")
    _save(tmp_path / "partial" / "cat" / "a.png", _rgb(8, 8))
    (tmp_path / "partial" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"without images.*\['dog'\]"):
        ImageFolder(tmp_path / "partial")


# ---------------------------------------------------------------- decoding

def _mode_images():
    grey = np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 200                                           # red, but fully transparent
    return {
        "L.png": Image.fromarray(grey),
        "1.bmp": Image.fromarray(grey > 128),
        "LA.png": Image.fromarray(grey).convert("LA"),
        "RGBA.png": Image.fromarray(rgba),
        "P.gif": _rgb(33, 21).convert("P"),
        "CMYK.jpg": _rgb(30, 40).convert("CMYK"),
        "I16.png": Image.fromarray(np.full((25, 19), 257 * 100, np.uint16)),
        "F.tiff": Image.fromarray(np.full((12, 12), 0.5, np.float32)),
        "tall.ppm": _rgb(300, 17),
        "wide.JPEG": _rgb(17, 300),
        "big.jpg": _rgb(1100, 900),                               # takes the JPEG draft path
    }


@pytest.mark.parametrize("resize", [256, 40])
def test_load_image_any_mode_and_size(tmp_path, resize):
    for name, img in _mode_images().items():
        out = load_image(_save(tmp_path / name, img), resize=resize)
        assert out.shape == (resize, resize, 3) and out.dtype == np.uint8, name
    assert load_image(tmp_path / "tall.ppm", resize=None).shape == (300, 17, 3)
    # 16-bit values are scaled to 8 bits, not clipped at 255.
    assert np.all(load_image(tmp_path / "I16.png", resize=8) == 100)
    assert np.all(np.abs(load_image(tmp_path / "F.tiff", resize=8).astype(int) - 128) <= 1)
    # Transparent pixels are laid over white.
    assert np.all(load_image(tmp_path / "RGBA.png", resize=8) == 255)


def test_load_image_rescales_shorter_side_then_centre_crops(tmp_path):
    # A 20x60 image: left third red, middle green, right third blue. Shorter side 20 -> 10,
    # so the kept centre 10x10 square is the green middle.
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20, 0] = a[:, 20:40, 1] = a[:, 40:, 2] = 255
    out = load_image(_save(tmp_path / "x.png", Image.fromarray(a)), resize=10)
    assert out.shape == (10, 10, 3)
    assert np.all(out[:, 1:-1] == [0, 255, 0])
    # EXIF orientation 6 (camera turned): stored 20 wide, 10 high; shown 10 wide, 20 high.
    img = _rgb(10, 20)
    exif = img.getexif()
    exif[0x0112] = 6
    assert load_image(_save(tmp_path / "turned.jpg", img, exif=exif), resize=None).shape == (20, 10, 3)


def test_unreadable_files_raise_a_clear_error(tmp_path):
    for path in _corrupt_files(tmp_path):
        with pytest.raises(UnreadableImageError, match=path.name):
            load_image(path)
    with pytest.raises(UnreadableImageError, match="missing"):
        load_image(tmp_path / "missing.jpg")


# ---------------------------------------------------------------- augmentation

def _known_image(h=9, w=11):
    return np.arange(h * w * 3, dtype=np.int32).reshape(h, w, 3)


def test_random_crop_flip_matches_slicing():
    img = _known_image()
    seen = set()
    for seed in range(40):
        top, left, mirrored = random_crop_params(img.shape, 5, np.random.default_rng(seed))
        expect = img[top:top + 5, left:left + 5]
        if mirrored:
            expect = expect[:, ::-1]
        got = random_crop_flip(img, 5, np.random.default_rng(seed))
        np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(crop_flip(img, top, left, 5, mirrored), expect)
        seen.add((top, left, mirrored))
    assert {t for t, _, _ in seen} == set(range(5)) and {m for _, _, m in seen} == {False, True}
    no_flip = [random_crop_params(img.shape, 5, np.random.default_rng(s), flip=False) for s in range(10)]
    assert not any(m for _, _, m in no_flip)
    with pytest.raises(ValueError, match="larger than the image"):
        random_crop_flip(img, 10, np.random.default_rng(0))


def test_center_and_ten_crops_match_slicing():
    img = _known_image()
    np.testing.assert_array_equal(center_crop(img, 5), img[2:7, 3:8])
    crops = ten_crops(img, 5)
    assert crops.shape == (10, 5, 5, 3)
    five = [img[0:5, 0:5], img[0:5, 6:11], img[4:9, 0:5], img[4:9, 6:11], img[2:7, 3:8]]
    for i, c in enumerate(five):
        np.testing.assert_array_equal(crops[i], c)
        np.testing.assert_array_equal(crops[5 + i], c[:, ::-1])


def test_pca_noise_adds_sum_of_alpha_lambda_p():
    vec = IMAGENET_EIGVEC
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-3)   # orthonormal columns
    img = np.random.default_rng(0).random((6, 7, 3)).astype(np.float32)
    out = pca_color_noise(img, np.random.default_rng(42), std=0.1)
    alpha = np.random.default_rng(42).normal(0, 0.1, 3)
    delta = sum(alpha[i] * IMAGENET_EIGVAL[i] * vec[:, i] for i in range(3))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out - img, np.broadcast_to(delta, img.shape), atol=1e-6)


# ---------------------------------------------------------------- Loader

def test_loader_shapes_normalisation_and_epochs(small_folder):
    root, _ = small_folder
    ds = ImageFolder(root)
    mean = np.array([0.4, 0.5, 0.6], np.float32)
    with Loader(ds, 4, train=False, crop=12, resize=16, mean=mean, workers=0) as ev:
        batches = list(ev)
        # a_cat sorts c0..c6, then the 3 bad files (indices 7, 8, 9): batches 2 and 3 come out short.
        assert len(ev) == 5 and [len(y) for _, y in batches] == [4, 3, 2, 4, 1]
        x, y = batches[0]
        assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"] and x.shape == (4, 3, 12, 12)
        assert y.dtype == np.int32 and list(y) == [0, 0, 0, 0]
        img, _ = ds.load(0, 16)
        expect = center_crop(img, 12).transpose(2, 0, 1) / 255.0 - mean[:, None, None]
        np.testing.assert_allclose(x[0], expect, atol=1e-6)
        assert ev.skipped == 3
    ten = Loader(ds, 3, train=False, crop=12, resize=16, ten_crop=True, workers=0)
    x, _ = next(iter(ten))
    assert x.shape == (3, 10, 3, 12, 12)
    np.testing.assert_allclose(x[0, 7], ten_crops(img, 12)[7].transpose(2, 0, 1) / 255.0, atol=1e-6)

    tr = Loader(ds, 5, train=True, crop=12, resize=16, workers=0, seed=1, drop_last=True)
    assert len(tr) == 3
    labels = lambda: np.concatenate([y for _, y in tr])
    tr.set_epoch(0)
    first = labels()
    assert tr.epoch == 1                                   # a full pass moves to the next epoch
    tr.set_epoch(0)
    np.testing.assert_array_equal(labels(), first)        # same epoch, same order
    orders = {tuple(labels()) for _ in range(4)}          # epochs 1..4
    assert len(orders) > 1
    # Resuming mid-epoch gives the rest of that epoch, batch for batch.
    tr.set_epoch(2)
    whole = list(tr)
    tr.set_epoch(2, start_batch=1)
    rest = list(tr)
    assert len(rest) == 2 and tr.epoch == 3
    for (xa, ya), (xb, yb) in zip(whole[1:], rest):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert tr.wait_time > 0

    limited = Loader(ds, 4, train=False, crop=12, resize=16, workers=0, limit=6)
    assert len(limited) == 2 and limited.num_samples == 6
    assert set(np.concatenate([y for _, y in limited])) == {0, 1}   # a random subset


def test_loader_rejects_bad_arguments(small_folder):
    ds = ImageFolder(small_folder[0])
    with pytest.raises(TypeError, match="ImageFolder"):
        Loader(str(small_folder[0]), 4, train=True)
    with pytest.raises(ValueError, match="larger than the rescaled"):
        Loader(ds, 4, train=True, crop=227, resize=128)
    with pytest.raises(ValueError, match="resize=None"):
        Loader(ds, 4, train=True, crop=12, resize=None)
    with pytest.raises(ValueError, match="divide it by 255"):
        Loader(ds, 4, train=True, crop=12, resize=16, mean=[120, 110, 100])
    with pytest.raises(ValueError, match="evaluation"):
        Loader(ds, 4, train=True, crop=12, resize=16, ten_crop=True)


def test_loader_array_dataset_and_channel_mean():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    ds = ArrayDataset(images, np.arange(10) % 3)
    assert ds.classes == ["0", "1", "2"]
    x, y = next(iter(Loader(ds, 10, train=False, crop=8, resize=None, workers=0)))
    np.testing.assert_allclose(x, images.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.testing.assert_allclose(compute_channel_mean(ds, resize=None), images.mean(axis=(0, 1, 2)) / 255,
                               atol=1e-5)
    x, _ = next(iter(Loader(ds, 2, train=True, crop=12, resize=16, workers=0)))
    assert x.shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(images.astype(np.float32), np.zeros(10))


def test_loader_workers_match_inline_and_skip_bad_files(small_folder):
    root, bad = small_folder
    ds = ImageFolder(root)
    opts = dict(batch_size=4, train=True, crop=12, resize=16, mean=[0.5, 0.5, 0.5], pca_noise=0.1,
                seed=7)
    inline = Loader(ds, workers=0, **opts)
    inline.set_epoch(3)
    expect = list(inline)
    assert inline.skipped == 3 and set(inline.bad_files) == {str(p) for p in bad}
    with Loader(ds, workers=2, prefetch=2, **opts) as pooled:
        pooled.set_epoch(3)
        got = list(pooled)
        assert pooled.skipped == 3 and pooled.epoch == 4
        assert sum(len(y) for _, y in got) == len(ds) - 3
        assert len(got) == len(expect)
        for (xa, ya), (xb, yb) in zip(expect, got):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        # Breaking out early, or leaving an iterator half-read, must not disturb the next pass.
        for _ in pooled:
            break
        it = iter(pooled)
        next(it)
        pooled.set_epoch(3)
        again = list(pooled)
        for (xa, _), (xb, _) in zip(expect, again):
            np.testing.assert_array_equal(xa, xb)
        procs = pooled._pool.procs
        # A worker killed (say by the OOM killer) is an error, not a hang.
        procs[0].kill()
        procs[0].join()
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            list(pooled)
    assert all(not p.is_alive() for p in procs)           # the workers were all stopped


def test_loader_raises_if_every_image_is_unreadable(tmp_path):
    _corrupt_files(tmp_path / "only_bad" / "cls")
    loader = Loader(ImageFolder(tmp_path / "only_bad"), 2, train=False, crop=8, resize=8, workers=0)
    with pytest.raises(RuntimeError, match="every image"):
        list(loader)


# ---------------------------------------------------------------- built-in dataset

def test_builtin_dataset_layout_determinism_and_regeneration(tmp_path):
    kw = dict(num_classes=10, train_per_class=4, val_per_class=2, image_size=40, seed=5)
    root = ensure_builtin_dataset(tmp_path / "a", **kw)
    train, val = ImageFolder(root / "train"), ImageFolder(root / "val")
    assert train.classes == val.classes == sorted(builtin.SHAPES)
    assert np.bincount(train.targets).tolist() == [4] * 10
    assert np.bincount(val.targets).tolist() == [2] * 10
    for path, _ in train.samples[::7]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (40, 40) and im.mode == "RGB"
    manifest = json.loads((root / builtin.MANIFEST).read_text())
    assert manifest["seed"] == 5 and manifest["train_per_class"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["a"]             # no temporary left over

    # Deterministic for a seed; another seed gives other images.
    other = ensure_builtin_dataset(tmp_path / "b", **kw)
    for (p, _), (q, _) in zip(train.samples, ImageFolder(other / "train").samples):
        assert open(p, "rb").read() == open(q, "rb").read()
    reseeded = ensure_builtin_dataset(tmp_path / "c", **dict(kw, seed=6))
    assert open(train.samples[0][0], "rb").read() != open(
        ImageFolder(reseeded / "train").samples[0][0], "rb").read()

    # Present and complete: kept. Marker missing (half-written) or other parameters: redone.
    stray = root / "train" / "circle" / "stray.jpg"
    stray.write_bytes(b"x")
    ensure_builtin_dataset(root, **kw)
    assert stray.exists()
    (root / builtin.MANIFEST).unlink()
    ensure_builtin_dataset(root, **kw)
    assert not stray.exists() and (root / builtin.MANIFEST).exists()
    ensure_builtin_dataset(root, **dict(kw, train_per_class=3))
    assert len(ImageFolder(root / "train")) == 30

    # Never deletes a folder that is not one of its own.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a pyalexnet built-in"):
        ensure_builtin_dataset(tmp_path / "mine", **kw)
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_builtin_default_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYALEXNET_DATA", str(tmp_path))
    assert builtin.default_root() == tmp_path / "builtin"


def _nearest_mean_accuracy(train_x, train_y, test_x, test_y):
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(10)])
    d = ((test_x[:, None, :] - means[None]) ** 2).sum(axis=2)
    return float((d.argmin(axis=1) == test_y).mean())


def test_builtin_classes_need_more_than_pixels_or_colour():
    """Drawn in memory (the same code the JPEG files come from): a nearest-class-mean on raw
    pixels, on the mean colour, or on the brightness is little better than chance (10%),
    while a shift-invariant feature -- the 2-D power spectrum of the brightness -- already
    separates most classes: the structure is there, in shapes and orientations."""
    def draw_set(n, seed):
        rng = np.random.default_rng(seed)
        x = np.concatenate([builtin.draw(k, n, 32, rng) for k in builtin.SHAPES]).astype(np.float64)
        return x, np.repeat(np.arange(10), n)

    (xa, ya), (xb, yb) = draw_set(60, 1), draw_set(30, 2)
    flat = lambda x: x.reshape(len(x), -1)
    colour = lambda x: x.mean(axis=(1, 2))
    bright = lambda x: x.mean(axis=(1, 2, 3))[:, None]

    def spectrum(x):
        g = x.mean(axis=3)
        g = g - g.mean(axis=(1, 2), keepdims=True)
        p = np.abs(np.fft.fft2(g)) ** 2
        return np.log1p(p / (p.sum(axis=(1, 2), keepdims=True) + 1e-9) * 1e4).reshape(len(x), -1)

    assert _nearest_mean_accuracy(flat(xa), ya, flat(xb), yb) < 0.35
    assert _nearest_mean_accuracy(colour(xa), ya, colour(xb), yb) < 0.25
    assert _nearest_mean_accuracy(bright(xa), ya, bright(xb), yb) < 0.25
    assert _nearest_mean_accuracy(spectrum(xa), ya, spectrum(xb), yb) > 0.6


# ---------------------------------------------------------------- CIFAR-10

def _cifar_batch(path, images, labels):
    """A batch in the real format: a protocol-2 pickle of a dict with bytes keys, data as
    uint8 (N, 3072) planar R, G, B rows."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": list(map(int, labels)), b"data": data,
                     b"filenames": [b"x.png"] * len(images)}, f, protocol=2)


def test_cifar10_loads_real_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train_imgs = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train_imgs[0, 1, 2] = [10, 20, 30]                     # pixel (row 1, col 2) of image 0
    for i in range(5):
        _cifar_batch(folder / f"data_batch_{i + 1}", train_imgs[2 * i:2 * i + 2], [i, 9 - i])
    test_imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    _cifar_batch(folder / "test_batch", test_imgs, [1, 2, 3])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)

    x, y, classes = load_cifar10(tmp_path)                 # the parent folder works too
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, train_imgs)
    assert list(x[0, 1, 2]) == [10, 20, 30]
    assert y.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5] and classes[3] == "c3"
    x, y, _ = load_cifar10(folder, split="val")
    np.testing.assert_array_equal(x, test_imgs)
    assert y.tolist() == [1, 2, 3]

    # The downloaded archive itself can be read.
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    (tmp_path / "archive_only").mkdir()
    (tmp_path / "cifar-10-python.tar.gz").rename(tmp_path / "archive_only" / "cifar-10-python.tar.gz")
    np.testing.assert_array_equal(load_cifar10(tmp_path / "archive_only", "test")[0], test_imgs)

    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4 is missing"):
        load_cifar10(folder)
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        load_cifar10(folder, split="dev")


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, "test")
