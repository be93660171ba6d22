"""predict: top-k class names of images under a checkpoint, text and JSON, bad images."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import _args, tiny  # noqa: F401  (the tiny net and data of the train tests)

from pyalexnet import checkpoint as ckpt
from pyalexnet import predict, train


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pred") / "run"
    assert train.main(_args(tiny, out, "--epochs", "1")) == 0
    return out, tiny[1]


def _val_images(root, n=3):
    return sorted(str(p) for p in (Path(root) / "val").rglob("*.jp*g"))[:n]


def test_text_output_names_the_classes(trained, capsys):
    run, root = trained
    images = _val_images(root)
    assert predict.main([*images, "--checkpoint", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    classes = ckpt.load(run).meta["classes"]
    assert out[0] == f"{images[0]}:" and len(out) == 4 * len(images)
    probs = [float(line.split("%")[0]) for line in out[1:4]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01
    assert out[1].split("%", 1)[1].strip() in classes


def test_json_ten_crop_and_folders(trained, capsys):
    run, root = trained
    folder = next((Path(root) / "val").iterdir())
    assert predict.main([str(folder), "--checkpoint", str(run), "--ten-crop", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ten_crop"] and len(r["predictions"]) == len(list(folder.iterdir()))
    top = r["predictions"][0]["top"]
    assert len(top) == 5 and abs(sum(t["prob"] for t in top)) <= 1 + 1e-9
    single = predict.Predictor(run, "numpy", ten_crop=True).probs(r["predictions"][0]["image"])
    assert top[0]["prob"] == pytest.approx(single.max())


def test_bad_image_is_one_line_and_the_rest_are_predicted(trained, tmp_path, capsys):
    run, root = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = _val_images(root, 1)[0]
    assert predict.main([str(bad), good, str(tmp_path / "missing.png"), "--checkpoint",
                         str(run)]) == 2
    cap = capsys.readouterr()
    errs = cap.err.strip().splitlines()
    assert len(errs) == 2 and "broken.jpg" in errs[1] and "missing.png" in errs[0]
    assert f"{good}:" in cap.out


def test_cli_runs_as_a_module(trained):
    run, root = trained
    p = subprocess.run([sys.executable, "-m", "pyalexnet.predict", _val_images(root, 1)[0],
                        "--checkpoint", str(run), "--top", "1", "--backend", "numpy"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == 2


def test_class_names_file_reaches_predict(tiny, tmp_path, capsys):  # noqa: F811
    names = tmp_path / "names.txt"
    names.write_text("".join(f"shape number {i}\n" for i in range(10)))
    run = tmp_path / "run"
    assert train.main(_args(tiny, run, "--epochs", "1", "--class-names", str(names))) == 0
    capsys.readouterr()
    assert predict.main([_val_images(tiny[1], 1)[0], "--checkpoint", str(run), "--top", "10"]) == 0
    shown = {line.split("%", 1)[1].strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert shown == {f"shape number {i}" for i in range(10)}
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0  # the names stay
    assert ckpt.load(run).meta["class_names"][3] == "shape number 3"


def test_converted_torchvision_weights_predict_with_synset_words(tmp_path, capsys):
    from shrink import shrunk_config
    from test_convert import _tv_state

    from pyalexnet.convert.cli import main as convert
    from pyalexnet.convert.safetensors_io import write_safetensors
    path, cfg = shrunk_config("alexnet-torchvision", tmp_path)
    write_safetensors(tmp_path / "w.safetensors", _tv_state(cfg, num_classes=3))
    (tmp_path / "synsets.txt").write_text("n01440764 tench, Tinca tinca\n"
                                          "n01443537 goldfish, Carassius auratus\n"
                                          "n01484850 great white shark\n")
    assert convert(["--from-torchvision", str(tmp_path / "w.safetensors"), "--out",
                    str(tmp_path / "tv.npz"), "--config", str(path), "--class-names",
                    str(tmp_path / "synsets.txt")]) == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)).save(
        tmp_path / "photo.png")
    capsys.readouterr()
    assert predict.main([str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "tv.npz"),
                         "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert {t["class"] for t in top} == {"tench, Tinca tinca", "goldfish, Carassius auratus",
                                         "great white shark"}
