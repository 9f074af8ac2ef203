"""Prebuilt kernels are found (and loaded) at serve time without nvcc: a build folder whose
manifest matches (sources hash, torch version, arch) is taken from $MLA_PLUGIN_PREBUILT_DIR
or the cache; a stale one is not. The .so files here are fakes: never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mla_plugin import build

FAKE_LIBRARY = "mla_plugin_kernels.cpython-311-x86_64-linux-gnu.so"


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch):
    """An empty cache and a prebuilt root of our own, whatever this machine has built."""
    monkeypatch.setenv("MLA_PLUGIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLA_PLUGIN_PREBUILT_DIR", str(tmp_path / "prebuilt"))
    return tmp_path / "prebuilt"


def make_build(folder: Path, *, archs=("12.0a", "12.1a"), sources=None, torch_version=None,
               library=True) -> Path:
    folder.mkdir(parents=True)
    manifest = {"sources": sources or build.source_hash(),
                "torch": torch_version or torch.__version__.split("+")[0],
                "archs": list(archs), "extension": build.EXTENSION_NAME}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if library:
        (folder / FAKE_LIBRARY).write_bytes(b"not a real library")
    return folder


def test_a_matching_build_is_found_for_each_of_its_archs(isolated_roots):
    folder = make_build(isolated_roots / "aot")
    assert build.find_prebuilt("12.0a") == folder
    assert build.find_prebuilt("12.1a") == folder
    assert build.find_prebuilt("9.0a") is None  # not among its archs


def test_a_build_out_folder_is_itself_a_prebuilt_root(isolated_roots):
    # `python -m mla_plugin build --out DIR` writes the manifest into DIR itself, and the
    # image sets MLA_PLUGIN_PREBUILT_DIR=DIR.
    folder = make_build(isolated_roots)
    assert build.find_prebuilt("12.0a") == folder


def test_a_stale_sources_hash_is_not_found(isolated_roots):
    make_build(isolated_roots / "old", sources="0123456789abcdef")
    assert build.source_hash() != "0123456789abcdef"
    assert build.find_prebuilt("12.0a") is None


def test_another_torch_version_is_not_found(isolated_roots):
    make_build(isolated_roots / "other-torch", torch_version="2.9.0")
    assert build.find_prebuilt("12.0a") is None


def test_a_manifest_without_its_library_is_not_found(isolated_roots):
    make_build(isolated_roots / "half", library=False)
    assert build.find_prebuilt("12.0a") is None


def test_the_stale_build_is_skipped_for_the_current_one(isolated_roots, tmp_path):
    make_build(isolated_roots / "a-stale", sources="0123456789abcdef")
    current = make_build(tmp_path / "cache" / "b-current")
    assert build.find_prebuilt("12.1a") == current
    listed = {Path(b["path"]).name: b["current"] for b in build.list_builds()}
    assert listed == {"a-stale": False, "b-current": True}


def test_load_extension_imports_the_prebuilt_library_without_building(isolated_roots, monkeypatch):
    folder = make_build(isolated_roots / "aot")
    imported = []
    monkeypatch.setattr(build, "_loaded", None)
    monkeypatch.setattr(build, "build", lambda *a, **k: pytest.fail("load_extension built"))
    monkeypatch.setattr(build, "_import_library", lambda path: imported.append(path) or "module")
    assert build.load_extension(archs=["12.1a"]) == "module"
    assert imported == [folder / FAKE_LIBRARY]


def test_build_without_a_gpu_and_without_arch_names_the_way_out():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "mla_plugin", "build"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "no CUDA GPU to take the kernel arch from" in result.stderr
    assert "pass --arch (e.g. --arch 12.0a,12.1a)" in result.stderr


def test_build_refuses_an_unknown_arch():
    result = subprocess.run([sys.executable, "-m", "mla_plugin", "build", "--arch", "8.0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "'8.0' is not supported; expected one of 9.0a, 12.0a, 12.1a" in result.stderr


def test_build_key_covers_headers_in_subfolders(tmp_path):
    """csrc/ ships recursively (decode/ ...): a header in a subfolder is part of the cache key."""
    import shutil

    from mla_plugin import _paths

    root = tmp_path / "csrc"
    shutil.copytree(_paths.csrc_dir(), root)
    before = build.source_hash(root)
    assert before == build.source_hash(root)  # deterministic
    (root / "decode" / "extra.cuh").write_text("// new\n")
    added = build.source_hash(root)
    assert added != before
    (root / "decode" / "extra.cuh").write_text("// changed\n")
    assert build.source_hash(root) != added
    assert any(p.parent.name == "decode" for p in build.source_files(root))
