"""The ahead-of-time build the Docker image runs, done for real without a GPU: `python -m
mla_plugin build --arch 12.0a --out DIR` compiles with nvcc and torch's CUDA headers, says
what it builds and how long it took, and DIR is then found through $MLA_PLUGIN_PREBUILT_DIR
and imports (on a CPU machine too) as a library built for sm_120a. About a minute on two
cores; the image builds 12.0a,12.1a the same way."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mla_plugin import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aot_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "kernels"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
               MLA_PLUGIN_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    result = subprocess.run(
        [sys.executable, "-m", "mla_plugin", "build", "--arch", "12.0a", "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=env, timeout=900)
    return out, result


def test_build_succeeds_without_a_gpu_and_reports_progress(aot_build):
    out, result = aot_build
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert re.search(r"\[mla_plugin\] building CUDA kernels for sm_120a from \d+ sources in .* "
                     rf"into {re.escape(str(out))}", result.stderr)
    assert re.search(rf"\[mla_plugin\] built sm_120a in \d+ s: {re.escape(str(out))}", result.stderr)


def test_the_built_folder_is_a_prebuilt_kernel_for_sm120a(aot_build, monkeypatch):
    out, result = aot_build
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["archs"] == ["12.0a"] and manifest["sources"] == build.source_hash()
    monkeypatch.setenv("MLA_PLUGIN_PREBUILT_DIR", str(out))
    assert build.find_prebuilt("12.0a") == out
    assert build.find_prebuilt("12.1a") is None
    library = build._import_library(build._library_in(out))
    assert library.built_archs() == "120a"
