"""python -m pyalexnet.summary: per-layer output shapes, parameters, multiply-adds, totals."""
import subprocess
import sys

import pytest

from pyalexnet.summary import main, summary


def test_alexnet_totals():
    s = summary("alexnet")
    assert s.total_params == 60_965_224
    assert s.total_macs == 724_406_816  # 724.4 M multiply-adds per image
    rows = {r.name: r for r in s.rows}
    assert rows["conv1"].output_shape == (96, 55, 55)
    assert rows["conv1"].params == 96 * 3 * 11 * 11 + 96
    assert rows["conv1"].macs == 96 * 55 * 55 * 3 * 11 * 11
    assert rows["conv2"].macs == 256 * 27 * 27 * 48 * 5 * 5  # groups 2: half the inputs
    assert rows["pool5"].output_shape == (256, 6, 6) and rows["pool5"].params == 0
    assert rows["fc6"].params == 9216 * 4096 + 4096
    assert [r.name for r in s][:4] == ["conv1", "relu1", "norm1", "pool1"]


def test_other_configs():
    assert summary("alexnet-owt").total_params == 61_100_840
    small = summary("cifar-small")
    assert small.input_shape == (3, 32, 32) and small.rows[-1].output_shape == (10,)
    assert small.total_macs <= 20_000_000
    assert summary("alexnet", num_classes=10).rows[-1].output_shape == (10,)


def test_cli(capsys):
    assert main(["alexnet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "60,965,224" in lines[-1] and "724,406,816" in lines[-1] and "724.4 M" in lines[-1]
    conv3 = next(line for line in lines if line.startswith("conv3"))
    assert "384x13x13" in conv3 and "885,120" in conv3 and "149,520,384" in conv3
    assert main(["--list"]) == 0
    assert "alexnet-owt" in capsys.readouterr().out
    assert main(["alexnet-3"]) == 2
    assert "cifar-small" in capsys.readouterr().err  # the error lists the bundled names


@pytest.mark.parametrize("name, total", [("alexnet", "60,965,224"), ("alexnet-owt", "61,100,840")])
def test_module_entry_point(name, total):
    out = subprocess.run([sys.executable, "-m", "pyalexnet.summary", name], check=True,
                         capture_output=True, text=True).stdout
    assert total in out.splitlines()[-1]
