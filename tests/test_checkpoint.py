"""Checkpoints: round trip, atomic replacement, no pickle, clear errors."""
import json
import os
import zipfile

import numpy as np
import pytest

from pyalexnet import checkpoint as ckpt


def _state(rng, scale=1.0):
    params = {"conv1.w": rng.normal(size=(4, 3, 5, 5)).astype(np.float32) * scale,
              "conv1.b": rng.normal(size=(4,)).astype(np.float32),
              "fc.w": rng.normal(size=(10, 7)).astype(np.float32)}
    vel = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    meta = {"epoch": 3, "step": 123, "batch": 7, "lr": 0.001,
            "schedule_state": {"best": 0.25, "bad": 1, "drops": 2},
            "options": {"config": "cifar-small", "seed": 5,
                        "source": {"kind": "builtin", "root": None}},
            "history": [{"epoch": 1, "val_top1": 0.5}], "nan_ok": float("nan"),
            "np_scalar": np.float32(1.5), "mean": np.array([0.1, 0.2, 0.3])}
    return params, vel, meta


def test_round_trip_is_exact(tmp_path, rng):
    params, vel, meta = _state(rng)
    path = ckpt.save(tmp_path / "c.npz", params, vel, meta)
    c = ckpt.load(path)
    assert c.params.keys() == params.keys() and c.velocities.keys() == vel.keys()
    for k in params:
        assert c.params[k].dtype == np.float32
        np.testing.assert_array_equal(c.params[k], params[k])
        np.testing.assert_array_equal(c.velocities[k], vel[k])
    assert c.epoch == 3 and c.step == 123
    assert c.meta["schedule_state"] == {"best": 0.25, "bad": 1, "drops": 2}
    assert c.meta["options"]["source"] == {"kind": "builtin", "root": None}
    assert c.meta["np_scalar"] == 1.5 and c.meta["mean"] == [0.1, 0.2, 0.3]
    assert np.isnan(c.meta["nan_ok"])
    assert c.meta["format"] == ckpt.FORMAT


def test_file_mode_follows_the_umask(tmp_path, rng):
    params, vel, meta = _state(rng)
    old = os.umask(0o022)
    try:
        path = ckpt.save(tmp_path / "c.npz", params, vel, meta)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_directory_paths(tmp_path, rng):
    params, vel, meta = _state(rng)
    path = ckpt.save(tmp_path / "run", params, vel, meta)   # a directory: checkpoint.npz inside
    assert path == tmp_path / "run" / ckpt.FILENAME
    assert ckpt.load(tmp_path / "run").step == 123
    assert ckpt.resolve(tmp_path / "run") == path


def test_no_pickle_needed(tmp_path, rng):
    params, vel, meta = _state(rng)
    path = ckpt.save(tmp_path / "c.npz", params, vel, meta)
    with np.load(path, allow_pickle=False) as z:    # raises if any entry is an object array
        for k in z.files:
            assert z[k].dtype != object
        assert json.loads(bytes(z["meta"]).decode())["step"] == 123


def test_crash_mid_write_keeps_the_old_checkpoint(tmp_path, rng, monkeypatch):
    old_p, old_v, old_meta = _state(rng)
    path = ckpt.save(tmp_path / "c.npz", old_p, old_v, old_meta)
    before = path.read_bytes()
    new_p, new_v, new_meta = _state(rng, scale=2.0)
    new_meta["step"] = 999

    real_savez = np.savez

    def dying_savez(f, **arrays):
        real_savez(f, **arrays)
        f.truncate(f.tell() // 2)        # half of the archive made it ...
        raise OSError("disk full")       # ... then the writer died

    monkeypatch.setattr(np, "savez", dying_savez)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, new_p, new_v, new_meta)
    assert path.read_bytes() == before
    assert ckpt.load(path).step == 123
    assert sorted(os.listdir(tmp_path)) == ["c.npz"], "the temporary file was left behind"

    # KeyboardInterrupt in the middle of writing: same guarantee.
    def interrupted_savez(f, **arrays):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, new_p, new_v, new_meta)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]

    monkeypatch.setattr(np, "savez", real_savez)

    # The bytes reached the temp file but the flush to disk failed: still the old file.
    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        ckpt.save(path, new_p, new_v, new_meta)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]
    monkeypatch.undo()

    ckpt.save(path, new_p, new_v, new_meta)
    assert ckpt.load(path).step == 999


def test_replace_is_a_rename(tmp_path, rng, monkeypatch):
    """The new file appears by os.replace of a temp file in the same directory."""
    params, vel, meta = _state(rng)
    calls = []
    real = os.replace

    def spy(src, dst):
        calls.append((os.path.dirname(os.fspath(src)), os.fspath(dst)))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = ckpt.save(tmp_path / "c.npz", params, vel, meta)
    assert calls == [(str(tmp_path), str(path))]


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        ckpt.load(tmp_path / "missing.npz")
    with pytest.raises(ckpt.CheckpointError, match="looked for checkpoint.npz"):
        ckpt.load(tmp_path)
    torn = tmp_path / "torn.npz"
    torn.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint"):
        ckpt.load(torn)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="not a pyalexnet checkpoint"):
        ckpt.load(other)
    with zipfile.ZipFile(other) as z:
        assert z.namelist() == ["a.npy"]
