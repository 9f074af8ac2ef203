"""README.md's set-up commands are the single source: .ci/run runs them verbatim."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md's Set up section has no ```sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands():
    install, test = _setup_commands()
    assert install.startswith("python -m pip install ") and "[test]" in install
    assert test.startswith("python -m pytest ")


def test_ci_runs_the_readme_commands():
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    for command in _setup_commands():
        assert command in ci_lines, f".ci/run does not run README's `{command}`"


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: pip succeeds, pytest exits with $FAKE_PYTEST_STATUS.
if [ "$2" = "pytest" ]; then exit "$FAKE_PYTEST_STATUS"; fi
exit 0
"""


@pytest.mark.parametrize("pytest_status,ci_status", [(0, 0), (1, 1), (2, 2), (5, 1)],
                         ids=["passed", "failed", "interrupted", "no-tests"])
def test_ci_exit_status(tmp_path, pytest_status, ci_status):
    script = ROOT / ".ci/run"
    assert os.access(script, os.X_OK)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}",
               FAKE_PYTEST_STATUS=str(pytest_status))
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == ci_status, result.stderr
    if pytest_status == 5:
        assert "collected no test" in result.stderr


def test_readme_names_the_serve_command():
    assert "vllm serve <model> --attention-backend MLA_XQA_SM120" in (
        ROOT / "README.md").read_text()
