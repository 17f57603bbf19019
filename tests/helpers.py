"""Shared test helpers."""
import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str):
    """`get_config()` of `configs/<name>` (the files are not a package)."""
    path = ROOT / "configs" / name
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
