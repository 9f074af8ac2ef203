"""csrc/ and configs/ ship inside the wheel and the sdist, and _paths finds them from a
checkout and from an unpacked wheel.

The wheel and sdist are built with setuptools' PEP 517 backend straight from a copy of
the project (no pip, no network): a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mla_plugin import _paths

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("pyproject.toml", "README.md")
PROJECT_DIRS = ("mla_plugin", "csrc", "configs")
# Stand-ins for kernel sources and tuning tables, at the top and in subfolders.
DUMMY_FILES = (
    "csrc/probe_kernel.cu",
    "csrc/probe_tile.cuh",
    "csrc/probe_api.h",
    "csrc/probe_binding.cpp",
    "csrc/probe_sub/probe_layout.cuh",
    "configs/probe_gpu.yaml",
    "configs/probe_serve/probe_model.yaml",
)
# One build per process: setuptools' backend keeps state between calls in one process.
BUILD = """
import sys
from setuptools import build_meta
name = getattr(build_meta, sys.argv[1])(sys.argv[2])
print(f"BUILT {name}")  # setuptools logs to stdout too: mark our line
"""


def _build(kind: str, project: Path, dist: Path) -> Path:
    result = subprocess.run([sys.executable, "-c", BUILD, kind, str(dist)], cwd=project,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    built_line = next(line for line in result.stdout.splitlines() if line.startswith("BUILT "))
    return dist / built_line.split()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, project / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, project / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in DUMMY_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("// probe\n")
    dist = tmp_path_factory.mktemp("dist")
    return _build("build_wheel", project, dist), _build("build_sdist", project, dist)


def _shipped(name: str) -> str:
    top, rest = name.split("/", 1)
    return f"mla_plugin/{top}/{rest}"  # csrc/x -> mla_plugin/csrc/x


def test_wheel_ships_sources_and_configs(built):
    wheel, _ = built
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [_shipped(n) for n in DUMMY_FILES if _shipped(n) not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
    assert "mla_plugin/__init__.py" in names and "mla_plugin/ops.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[vllm.general_plugins]" in text
    assert "mla_xqa_sm120 = mla_plugin:register" in text


def test_sdist_ships_sources_and_configs(built):
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    missing = [n for n in DUMMY_FILES if n not in names]
    assert not missing, f"not in {sdist.name}: {missing}"
    assert "pyproject.toml" in names


def test_paths_from_an_unpacked_wheel(built, tmp_path):
    wheel, _ = built
    zipfile.ZipFile(wheel).extractall(tmp_path)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "import mla_plugin, mla_plugin._paths as p; "
              "print(mla_plugin.__file__); print(p.csrc_dir()); print(p.configs_dir())")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-4000:]
    package_file, csrc, configs = result.stdout.split()
    assert Path(package_file).parent == tmp_path / "mla_plugin"
    assert Path(csrc) == tmp_path / "mla_plugin" / "csrc"
    assert Path(configs) == tmp_path / "mla_plugin" / "configs"
    assert (Path(csrc) / "probe_sub" / "probe_layout.cuh").is_file()


def test_paths_from_this_checkout():
    assert _paths.csrc_dir() == ROOT / "csrc"
    assert _paths.configs_dir() == ROOT / "configs"


def test_paths_refuse_a_folder_outside_a_checkout(tmp_path):
    """An installed package without the data must not take site-packages/configs."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "mla_plugin", site / "mla_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (site / "configs").mkdir()  # someone else's top-level folder
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import mla_plugin._paths as p\n"
              "try:\n    p.configs_dir()\nexcept FileNotFoundError as exc:\n"
              "    print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", script, str(site)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("refused: mla_plugin: the configs/ folder is missing")
