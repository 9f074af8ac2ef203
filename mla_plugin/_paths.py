"""Where the kernel sources (csrc/) and tuning tables (configs/) are.

The repository keeps them at its top level; a wheel ships them inside the package as
mla_plugin/csrc and mla_plugin/configs (pyproject.toml maps them). Both layouts are
handled here so the JIT build finds its sources from a checkout, an editable install
(whose mla_plugin/ is the checkout's) and a wheel install alike.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    shipped = _PACKAGE_DIR / name  # wheel install
    if shipped.is_dir():
        return shipped
    # Checkout or editable install: only beside our own pyproject.toml, so a stray
    # site-packages/configs of some other distribution is never taken for ours.
    checkout = _PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    raise FileNotFoundError(
        f"mla_plugin: the {name}/ folder is missing (looked for {shipped}, and for "
        f"{checkout / name} beside a pyproject.toml); reinstall mla_plugin or run from "
        f"a full checkout"
    )


def csrc_dir() -> Path:
    """The folder holding the kernel sources (*.cu, *.cuh, *.h, *.cpp)."""
    return _data_dir("csrc")


def configs_dir() -> Path:
    """The folder holding the per-GPU tuning tables and example configs (*.yaml)."""
    return _data_dir("configs")
