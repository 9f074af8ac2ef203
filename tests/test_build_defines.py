"""$MLA_PLUGIN_NVCC_DEFINES: extra -D flags for nvcc (the mutation check's kernel hooks), part of
the build's key so a build made with them never loads as the real one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mla_plugin import build

MUTATION = "MLA_MUTATE_P_DROP_BITS=1"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv(build.DEFINES_ENV, raising=False)
    monkeypatch.setenv("MLA_PLUGIN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLA_PLUGIN_PREBUILT_DIR", raising=False)


def test_defines_are_read_as_d_flags(monkeypatch):
    assert build.nvcc_defines() == [] and build.nvcc_flags() == list(build.NVCC_FLAGS)
    monkeypatch.setenv(build.DEFINES_ENV, "MLA_MUTATE_P_DROP_BITS=1, MLA_MUTATE_OUT_SCALE_ULPS=2 FLAG")
    assert build.nvcc_defines() == ["-DMLA_MUTATE_P_DROP_BITS=1", "-DMLA_MUTATE_OUT_SCALE_ULPS=2", "-DFLAG"]
    assert build.nvcc_flags()[-3:] == build.nvcc_defines()


@pytest.mark.parametrize("bad", ["1ABC=2", "A=$(rm -rf)", "A=\"x\"", "-DA=1"])
def test_a_define_that_is_not_name_or_name_value_is_refused(monkeypatch, bad):
    monkeypatch.setenv(build.DEFINES_ENV, bad)
    with pytest.raises(ValueError, match="MLA_PLUGIN_NVCC_DEFINES: cannot read"):
        build.nvcc_defines()


def test_the_build_key_changes_with_the_defines_and_only_with_them(monkeypatch):
    real = build.source_hash()
    monkeypatch.setenv(build.DEFINES_ENV, "")
    assert build.source_hash() == real  # empty: the real build
    monkeypatch.setenv(build.DEFINES_ENV, MUTATION)
    mutated = build.source_hash()
    assert mutated != real
    assert build.current_key(["9.0a"]).folder_name != build.BuildKey(real, torch.__version__.split("+")[0],
                                                                      ("9.0a",)).folder_name
    monkeypatch.setenv(build.DEFINES_ENV, "MLA_MUTATE_P_DROP_BITS=2")
    assert build.source_hash() not in (real, mutated)
    monkeypatch.setenv(build.DEFINES_ENV, "MLA_MUTATE_OUT_SCALE_ULPS=1")
    assert build.source_hash() not in (real, mutated)


def _fake_build_folder(root: Path, sources: str) -> Path:
    folder = root / sources
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"sources": sources, "torch": torch.__version__.split("+")[0], "archs": ["9.0a"],
         "extension": build.EXTENSION_NAME}))
    (folder / f"{build.EXTENSION_NAME}.so").write_bytes(b"not a library")
    return folder


def test_a_mutated_build_is_never_found_as_the_real_one_and_back(monkeypatch, tmp_path):
    real = _fake_build_folder(tmp_path / "cache", build.source_hash())
    monkeypatch.setenv(build.DEFINES_ENV, MUTATION)
    assert build.find_prebuilt("9.0a") is None  # the real build does not serve a mutated key
    mutated = _fake_build_folder(tmp_path / "cache", build.source_hash())
    assert build.find_prebuilt("9.0a") == mutated
    monkeypatch.delenv(build.DEFINES_ENV)
    assert build.find_prebuilt("9.0a") == real  # nor the mutated one the real key


def test_the_jit_build_passes_the_defines_to_nvcc_and_records_them(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as cpp_ext

    home = tmp_path / "cuda"
    (home / "include").mkdir(parents=True)
    (home / "include" / "cuda.h").write_text("")
    monkeypatch.setattr(build, "cuda_home", lambda: str(home))
    monkeypatch.setenv("CUDA_HOME", str(home))  # build() sets both: restored after the test
    monkeypatch.setattr(cpp_ext, "CUDA_HOME", cpp_ext.CUDA_HOME)
    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        (Path(kwargs["build_directory"]) / f"{build.EXTENSION_NAME}.so").write_bytes(b"")

    monkeypatch.setattr(cpp_ext, "load", fake_load)
    monkeypatch.setenv(build.DEFINES_ENV, MUTATION)
    folder = build.build(["9.0a"], verbose=False)
    (kwargs,) = calls
    assert "-DMLA_MUTATE_P_DROP_BITS=1" in kwargs["extra_cuda_cflags"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in kwargs["extra_cuda_cflags"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["sources"] == build.source_hash() and manifest["nvcc_defines"] == ["-DMLA_MUTATE_P_DROP_BITS=1"]
    assert folder.name.startswith(build.source_hash())
    monkeypatch.delenv(build.DEFINES_ENV)
    assert build.find_prebuilt("9.0a") is None  # the real key does not pick it up


def test_ptxas_check_compiles_with_the_defines_too(monkeypatch, tmp_path):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text("")
    monkeypatch.setattr(build, "cuda_home", lambda: str(home))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setenv(build.DEFINES_ENV, MUTATION)
    build.ptxas_report("9.0a", sources=("launch.cu",), jobs=1)
    assert "-DMLA_MUTATE_P_DROP_BITS=1" in commands[0]
