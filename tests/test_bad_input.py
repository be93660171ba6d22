"""What users really feed the programs. Each bad input must give one line on stderr that
names the file, key or flag and what is allowed, exit status 2, no traceback, and leave
what was there untouched; each odd-but-valid image must simply work."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_predict import trained  # noqa: F401  (a tiny trained run)
from test_train import TINY_TOML, _args, tiny  # noqa: F401

from pyalexnet import evaluate, predict, train
from pyalexnet.convert.cli import main as convert
from pyalexnet.convert.safetensors_io import write_safetensors
from pyalexnet.data.augment import load_image


def _one_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"not one line:\n{err}"
    assert "Traceback" not in err and "error:" in err, err
    for n in needles:
        assert str(n) in err, f"{n!r} not in {err!r}"
    return err


def _usage_error(capsys, main, argv, *needles):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return _one_line(capsys, *needles)


# ---- checkpoints ------------------------------------------------------------------------------

@pytest.fixture
def broken_checkpoints(trained, tmp_path):  # noqa: F811
    run, _ = trained
    good = (run / "checkpoint.npz").read_bytes()
    zero, torn = tmp_path / "zero.npz", tmp_path / "torn.npz"
    zero.write_bytes(b"")
    torn.write_bytes(good[:len(good) // 2])
    return [zero, torn]


def test_broken_checkpoints_everywhere(trained, tiny, broken_checkpoints, tmp_path,  # noqa: F811
                                      capsys):
    _, root = trained
    img = next((root / "val").rglob("*.jp*g"))
    for bad in broken_checkpoints:
        before = bad.read_bytes()
        runs = [lambda: predict.main([str(img), "--checkpoint", str(bad)]),
                lambda: evaluate.main([str(bad)]),
                lambda: train.main(["--resume", str(bad)]),
                lambda: train.main(_args(tiny, tmp_path / "r", "--init-from", str(bad))),
                lambda: convert(["--checkpoint", str(bad), "--to-onnx", str(tmp_path / "m.onnx")])]
        for run in runs:
            assert run() == 2
            _one_line(capsys, bad, "cannot read checkpoint")
        assert bad.read_bytes() == before
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_of_another_config(trained, tiny, tmp_path, capsys):  # noqa: F811
    run, root = trained
    from pyalexnet import checkpoint as ckpt
    c = ckpt.load(run)
    other = tmp_path / "other.npz"
    ckpt.save(other, c.params, {}, {**c.meta, "options": {**c.meta["options"],
                                                           "config": "cifar-small"}})
    img = next((root / "val").rglob("*.jp*g"))
    assert predict.main([str(img), "--checkpoint", str(other)]) == 2
    _one_line(capsys, other, "cifar-small", "missing")
    assert evaluate.main([str(other)]) == 2
    _one_line(capsys, other, "cifar-small", "missing")
    # fine-tuning the tiny net from cifar-small weights
    small = tmp_path / "small.npz"
    from pyalexnet.config import load_config
    from pyalexnet.model import init_params
    ckpt.save(small, init_params(load_config("cifar-small")), {},
              {"options": {"config": "cifar-small"}, "num_classes": 10})
    assert train.main(_args(tiny, tmp_path / "ft", "--init-from", str(small))) == 2
    _one_line(capsys, small, "do not fit config tiny")
    assert not (tmp_path / "ft" / "checkpoint.npz").exists()


# ---- torchvision state dicts ----------------------------------------------------------------

@pytest.mark.parametrize("edit,needle", [
    (lambda s: s.pop("classifier.4.weight"), "missing key(s) classifier.4.weight"),
    (lambda s: s.update({"features.12.weight": np.zeros(2, np.float32)}),
     "unexpected key(s) features.12.weight"),
    (lambda s: s.update({"features.0.weight": np.zeros((8, 3, 5, 5), np.float32)}),
     "features.0.weight has shape (8, 3, 5, 5), config"),
], ids=["missing", "extra", "shape"])
def test_bad_state_dict_files(tmp_path, capsys, edit, needle):
    from shrink import shrunk_config
    from test_convert import _tv_state
    path, cfg = shrunk_config("alexnet-torchvision", tmp_path)
    state = _tv_state(cfg)
    edit(state)
    write_safetensors(tmp_path / "a.safetensors", state)
    out = tmp_path / "keep.npz"
    out.write_bytes(b"the user's file")
    assert convert(["--from-torchvision", str(tmp_path / "a.safetensors"), "--out", str(out),
                    "--config", str(path)]) == 2
    _one_line(capsys, "a.safetensors", needle)
    assert out.read_bytes() == b"the user's file"


def test_torn_safetensors_file(tmp_path, capsys):
    write_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(100, np.float32)})
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "a.safetensors").write_bytes(data[:-40])
    assert convert(["--from-torchvision", str(tmp_path / "a.safetensors"), "--out",
                    str(tmp_path / "o.npz")]) == 2
    _one_line(capsys, "a.safetensors", "truncated")


# ---- configs ---------------------------------------------------------------------------------

BAD_CONFIGS = [
    ('type = "maxpool"', 'type = "maxpooling"', "type must be one of"),
    ("size = 3\npad = 1\ninit_std = 0.2", "size = 3\npad = 1\ninit_std = 0.2\nstrides = 2",
     "unknown key(s) strides; allowed"),
    ("filters = 6\nsize = 3", "filters = 6\nsize = 21", "a 21x21 filter does not fit a 16x16"),
    ("filters = 8\nsize = 3", "filters = 8\nsize = 3\ngroups = 4",
     "groups=4 must divide both its 6 input channels and its 8 filters"),
]


@pytest.mark.parametrize("old,new,needle", BAD_CONFIGS, ids=["type", "key", "kernel", "groups"])
def test_bad_configs(tiny, tmp_path, capsys, old, new, needle):  # noqa: F811
    assert old in TINY_TOML
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_TOML.replace(old, new, 1))
    assert train.main(_args((bad, tiny[1]), tmp_path / "run")) == 2
    _one_line(capsys, bad, needle)
    assert not (tmp_path / "run").exists()


def test_devices_2_on_a_one_tower_config(tiny, tmp_path):  # noqa: F811
    p = subprocess.run([sys.executable, "-m", "pyalexnet.train",
                        *_args(tiny, tmp_path / "run", "--devices", "2")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == ("error: devices=2 needs a two-tower config (towers = 2); tiny "
                                "has 1 tower(s)")


@pytest.mark.parametrize("flag,value,needle", [
    ("--batch-size", "0", "argument --batch-size: must be a positive integer, got 0"),
    ("--lr", "-1", "argument --lr: must be a positive number, got -1"),
    ("--devices", "3", "argument --devices: invalid choice: 3"),
])
def test_bad_flags(capsys, flag, value, needle):
    _usage_error(capsys, train.main, [flag, value], needle)


def test_stats_with_cuda_graph(tiny, tmp_path, capsys):  # noqa: F811
    argv = _args(tiny, tmp_path / "run", "--stats-every", "1", "--cuda-graph")
    argv[argv.index("--backend") + 1] = "emu"
    assert train.main(argv) == 2
    _one_line(capsys, "--stats-every", "--cuda-graph")


def test_bad_predict_flags(capsys, tmp_path):
    _usage_error(capsys, predict.main, ["--top"], "--top")
    assert predict.main(["x.jpg", "--top", "0"]) == 2
    _one_line(capsys, "--top must be at least 1")


# ---- data ------------------------------------------------------------------------------------

def test_data_folder_without_images(tiny, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "cat" / "readme.txt").write_text("no images here")
    assert train.main(_args(tiny, tmp_path / "run")[:-2] + ["--data", str(root)]) == 2
    _one_line(capsys, root / "train", "no images found")


def test_train_and_val_with_different_classes(tiny, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "data"
    shutil.copytree(tiny[1], root)
    (root / "val" / next(iter(sorted(p.name for p in (root / "val").iterdir())))).rename(
        root / "val" / "walrus")
    assert train.main(_args((tiny[0], root), tmp_path / "run")) == 2
    _one_line(capsys, "walrus", root / "val", "must be among the", root / "train")


# ---- images ----------------------------------------------------------------------------------

def _odd_images(d):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "deep16.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.png")
    rgba = np.concatenate([rgb, rng.integers(0, 256, (24, 40, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba).save(d / "alpha.png")
    Image.fromarray(rgb[:1, :1]).save(d / "tiny1x1.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(d / "exif.jpg", exif=exif.tobytes())
    Image.new("RGB", (10000, 10000), (200, 10, 10)).save(d / "huge.jpg", quality=50)
    return sorted(d.iterdir())


def test_odd_images_are_predicted(trained, tmp_path, capsys):  # noqa: F811
    run, _ = trained
    files = _odd_images(tmp_path)
    assert Image.open(tmp_path / "deep16.png").mode.startswith("I")
    assert predict.main([*map(str, files), "--checkpoint", str(run), "--top", "1"]) == 0
    out = capsys.readouterr().out
    for f in files:
        assert f"{f}:" in out
    assert load_image(tmp_path / "exif.jpg", None).shape == (40, 24, 3)  # turned upright


def test_huge_image_is_refused_before_decoding(trained, tmp_path, capsys):  # noqa: F811
    run, _ = trained
    Image.new("L", (10000, 10000), 7).save(tmp_path / "huge.png")
    assert predict.main([str(tmp_path / "huge.png"), "--checkpoint", str(run)]) == 2
    _one_line(capsys, "huge.png", "100 megapixels", "limit of 64")


def test_init_from_with_other_shapes_names_the_key(trained, tiny, tmp_path, capsys):  # noqa: F811
    run, _ = trained
    # the same 10 classes but a 20-pixel crop: fc's input is larger, so its weights do not fit
    assert train.main(_args(tiny, tmp_path / "ft", "--init-from", str(run), "--crop", "20")) == 2
    _one_line(capsys, "--init-from", "fc.w has shape (10, 72), config tiny needs (10, 128)")


def test_pth_with_an_extra_key(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")
    from shrink import shrunk_config
    from test_convert import _tv_state
    path, cfg = shrunk_config("alexnet-torchvision", tmp_path)
    state = {k: torch.from_numpy(v) for k, v in _tv_state(cfg).items()}
    state["features.1.running_mean"] = torch.zeros(3)
    torch.save(state, tmp_path / "a.pth")
    assert convert(["--from-torchvision", str(tmp_path / "a.pth"), "--out",
                    str(tmp_path / "o.npz"), "--config", str(path)]) == 2
    _one_line(capsys, "a.pth", "unexpected key(s) features.1.running_mean")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    assert convert(["--from-torchvision", str(tmp_path / "junk.pth"), "--out",
                    str(tmp_path / "o.npz"), "--config", str(path)]) == 2
    _one_line(capsys, "junk.pth", "not a readable PyTorch state dict")
    assert not (tmp_path / "o.npz").exists()


def test_resume_from_converted_weights(tmp_path, capsys):
    from pyalexnet import checkpoint as ckpt
    ckpt.save(tmp_path / "w.npz", {}, {}, {"kind": "weights", "options": {"config": "cifar-small"}})
    assert train.main(["--resume", str(tmp_path / "w.npz")]) == 2
    _one_line(capsys, "w.npz", "--init-from")


def test_class_names_that_do_not_fit(tiny, tmp_path, capsys):  # noqa: F811
    names = tmp_path / "names.txt"
    names.write_text("one\ntwo\n")
    assert train.main(_args(tiny, tmp_path / "run", "--class-names", str(names))) == 2
    _one_line(capsys, "--class-names", "2 names for 10 classes")
