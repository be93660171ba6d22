"""Bundled configs with every layer kept but fewer filters and fc units, for fast tests of
whole-network paths (every op, group and tower structure stays)."""
import re

from pyalexnet.config import CONFIG_DIR, load_config


def shrunk_config(name, tmp_path, filters=8, hidden=64):
    """The config ``name`` with conv filters divided by ``filters`` and hidden fc outputs
    set to ``hidden``, written to ``tmp_path``; returns (path, Config)."""
    text = (CONFIG_DIR / f"{name}.toml").read_text()
    text = re.sub(r"^filters = (\d+)", lambda m: f"filters = {int(m.group(1)) // filters}", text,
                  flags=re.M)
    text = re.sub(r"^outputs = 4096", f"outputs = {hidden}", text, flags=re.M)
    path = tmp_path / f"{name}-small.toml"
    path.write_text(text)
    return path, load_config(path)
