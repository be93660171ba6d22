"""Bundled network definitions (TOML), read by pyalexnet.model.load_config."""
