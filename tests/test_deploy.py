"""The deploy files, checked offline: Docker cannot run here (no daemon), so

- docker/Dockerfile is linted with hadolint, and its install steps run without Docker: the wheel
  is built from a copy of the repo made with .dockerignore's rules, installed into an empty
  folder, and that installed copy (no repo checkout on its path) serves, passes the image's
  HEALTHCHECK command and answers the compose file's one-shot edge question;
- compose.yaml and docker/compose.gpu.yaml are validated against the compose-spec JSON schema;
- deploy/k8s is rendered with `kubectl kustomize` (base and GPU overlay) and validated, strict,
  against the Kubernetes OpenAPI schemas of the oldest and newest versions it targets.

The linters and schemas come from the test extra's wheels (pyproject.toml), so nothing is
fetched at test time.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from cloud_server.config import ServerConfig
from common.paths import MODELS_DIR, REPO_ROOT, SAMPLES_DIR

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
COMPOSE = REPO_ROOT / "compose.yaml"
COMPOSE_GPU = REPO_ROOT / "docker" / "compose.gpu.yaml"
K8S = REPO_ROOT / "deploy" / "k8s"
# Kubernetes versions the manifests must validate against: 1.30 is the first with the preStop
# `sleep` action on by default (native gRPC probes need 1.27); 1.37 is the newest bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")
QUESTIONS = [json.loads(line)
             for line in (SAMPLES_DIR / "questions.jsonl").read_text().splitlines()]


def tool(name: str) -> str:
    """A linter/validator console script from the test extra, next to this interpreter."""
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not installed; run `make install` (it comes with the test extra)")
    return found


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120),
                          **kw)


# --------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages() -> list[str]:
    return [m.group(1) for word, rest in dockerfile_instructions() if word == "FROM"
            for m in [re.search(r"\bAS\s+(\S+)", rest, re.I)] if m]


@pytest.mark.integration
def test_dockerfile_passes_hadolint():
    result = run([tool("hadolint"), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_hadolint_does_flag_mistakes(tmp_path):
    """The clean result above means something: the same binary flags a sloppy Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nUSER root\n")
    result = run([tool("hadolint"), "--no-color", str(bad)])
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042", "DL3002"):
        assert rule in result.stdout, result.stdout


def test_dockerfile_shape():
    instructions = dockerfile_instructions()
    assert {"cloud-server", "edge-agent"} <= set(stages())
    users = [rest for word, rest in instructions if word == "USER"]
    # Numeric and not root, so Kubernetes' runAsNonRoot can verify it.
    assert users and all(re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", u) for u in users), users
    exposed = {port for word, rest in instructions if word == "EXPOSE" for port in rest.split()}
    assert exposed == {"50051", "9090"}  # gRPC, Prometheus metrics
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert len(health) == 1 and "cloud_server.healthcheck" in health[0]
    # Every ALIGNEDVQ_* variable the image sets is a real server setting.
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    for name in re.findall(r"ALIGNEDVQ_(\w+)=", env):
        assert name.lower() in ServerConfig.model_fields, name


# --------------------------------------------------------------------------------------------
# The Dockerfile's install steps, without Docker


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not emulated here"
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, as far as our file uses it: a pattern matches the path
    or one of its parent folders; a leading `**/` matches at any depth."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatchcase(part, tail) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def build_context(dest: Path) -> Path:
    """What `docker build .` sends: the repo root less .dockerignore's matches."""
    patterns = dockerignore_patterns()
    for root, dirs, files in os.walk(REPO_ROOT):
        rel_root = Path(root).relative_to(REPO_ROOT)
        dirs[:] = [d for d in dirs if not ignored((rel_root / d).as_posix(), patterns)]
        for f in files:
            rel = (rel_root / f).as_posix()
            if not ignored(rel, patterns):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / rel, dest / rel)
    return dest


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for rel in (".venv/bin/python", ".git/HEAD", "examples/node-client/node_modules/x/index.js",
                "common/__pycache__/paths.cpython-311.pyc", "alignedvq.egg-info/PKG-INFO",
                "runs/log.txt"):
        assert ignored(rel, patterns), rel
    for rel in ("pyproject.toml", "common/paths.py", "common/models/tiny-llava/model.safetensors",
                "protos/alignedvq/v1/inference.proto"):
        assert not ignored(rel, patterns), rel


def dockerfile_run(prefix: str) -> list[str]:
    """The Dockerfile's RUN command that starts with ``prefix``, as argv."""
    found = [shlex.split(rest) for word, rest in dockerfile_instructions()
             if word == "RUN" and prefix in rest]
    assert len(found) == 1, f"expected one RUN with {prefix!r} in {DOCKERFILE}"
    argv = found[0]
    while argv and argv[0].startswith("--mount"):  # BuildKit mount flags belong to RUN
        argv.pop(0)
    return argv


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The Dockerfile's `wheel` and `runtime` install steps, run against a local folder."""
    tmp = tmp_path_factory.mktemp("docker-build")
    context = build_context(tmp / "context")
    # RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .   (WORKDIR /src = the context)
    argv = dockerfile_run("pip wheel")
    assert argv[:2] == ["pip", "wheel"] and argv[-1] == "."
    wheels = tmp / "wheels"
    argv = [sys.executable, "-m", *argv]
    argv[argv.index("--wheel-dir") + 1] = str(wheels)
    # The image's pip fetches setuptools into an isolated build env; here the venv's is used.
    result = run(argv[:-1] + ["--no-build-isolation", "."], cwd=context, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    # RUN ... pip install --no-cache-dir /wheels/alignedvq-<version>-py3-none-any.whl
    argv = dockerfile_run("pip install --no-cache-dir /wheels/")
    wheel = wheels / Path(argv[-1]).name
    assert wheel.exists(), (f"the Dockerfile installs {Path(argv[-1]).name}, the build made "
                            f"{[p.name for p in wheels.iterdir()]}: update the Dockerfile")
    target = tmp / "site-packages"
    # Dependencies are the venv's (the image resolves them from PyPI); --target keeps this copy
    # apart from the repo's editable install.
    result = run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps",
                  "--target", str(target), str(wheel)], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    # Run from a folder outside the repo: nothing may be found through the working directory.
    workdir = tmp / "cwd"
    workdir.mkdir()
    return {"wheel": wheel, "target": target, "env": env, "cwd": workdir}


@pytest.mark.integration
def test_wheel_carries_the_embedded_model_codec_and_samples(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    shipped = {p.relative_to(REPO_ROOT).as_posix() for p in MODELS_DIR.rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    for package in ("alignedvq/v1/inference_pb2.py", "cloud_server/healthcheck.py",
                    "common/paths.py", "edge_agent/cli.py"):
        assert package in names


@pytest.mark.integration
def test_the_install_holds_exactly_the_four_packages(installed):
    """The project's brief fixes the top level: one package per half, what both run, and the
    offline toolkit with the stubs; data travels inside ``common``, not as a package of its own."""
    packages = {p.name for p in installed["target"].iterdir()
                if p.is_dir() and not p.name.endswith(".dist-info") and p.name != "bin"}
    assert packages == {"alignedvq", "cloud_server", "common", "edge_agent"}, packages


@pytest.mark.integration
def test_installed_copy_imports_its_own_files_and_entry_points(installed):
    """Every console script's entry point loads from the installed copy, and the default model
    paths point inside it (not at this checkout)."""
    code = """
import importlib.metadata as md, json, sys
from pathlib import Path
import common.paths as paths
target = Path(sys.argv[1]).resolve()
(dist,) = [d for d in md.distributions(path=[str(target)]) if d.metadata["Name"] == "alignedvq"]
scripts = {}
for ep in dist.entry_points.select(group="console_scripts"):
    scripts[ep.name] = callable(ep.load())
print(json.dumps({"scripts": scripts, "paths": str(Path(paths.__file__).resolve()),
                  "model": str(paths.DEFAULT_MODEL_DIR.resolve()),
                  "model_ok": (paths.DEFAULT_MODEL_DIR / "model.safetensors").is_file(),
                  "codec_ok": (paths.DEFAULT_CODEC_DIR / "codec.safetensors").is_file()}))
"""
    result = run([sys.executable, "-c", code, str(installed["target"])], env=installed["env"],
                 cwd=installed["cwd"])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["scripts"] == {"alignedvq": True, "cloud-server": True, "edge-agent": True}
    target = str(installed["target"].resolve())
    assert info["paths"].startswith(target) and info["model"].startswith(target), info
    assert info["model_ok"] and info["codec_ok"]
    for name in ("cloud-server", "edge-agent", "alignedvq"):
        assert (installed["target"] / "bin" / name).exists()


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.integration
def test_installed_copy_serves_passes_healthcheck_and_answers_the_compose_question(installed):
    """What `docker compose up` does, minus Docker: the installed cloud-server with the image's
    environment, the image's HEALTHCHECK command until it passes, then the compose file's
    edge-agent command (its /samples mount pointed at the repo's samples)."""
    env = {**installed["env"], "ALIGNEDVQ_HOST": "127.0.0.1", "ALIGNEDVQ_PORT": "0"}
    bin_dir = installed["target"] / "bin"
    server = subprocess.Popen([str(bin_dir / "cloud-server")], env=env, cwd=installed["cwd"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        match = re.search(r"listening on (\S+)", first)
        assert match, first + server.stderr.read()
        address = match.group(1)
        # Wait for the server's own "ready" line (printed once health says SERVING) instead of
        # polling the healthcheck: each check is a python start-up that slows the model load.
        ready = threading.Event()

        def read_stdout():
            for line in server.stdout:
                if "ready" in line:
                    ready.set()
        threading.Thread(target=read_stdout, daemon=True).start()
        assert ready.wait(180) and server.poll() is None, "the installed cloud-server never " \
            "became ready"
        health = compose()["services"]["cloud-server"]["healthcheck"]["test"]
        assert health[0] == "CMD"
        check = [sys.executable if health[1] == "python" else health[1], *health[2:],
                 "--address", address]
        result = run(check, env=installed["env"], cwd=installed["cwd"])
        assert result.returncode == 0 and "SERVING" in result.stdout, \
            result.stdout + result.stderr

        edge = compose()["services"]["edge-agent"]
        mount_src, mount_dst = edge["volumes"][0].split(":")[:2]
        args = list(edge["command"])
        args[args.index("--server") + 1] = address
        image = args[args.index("--image") + 1]
        assert image.startswith(mount_dst + "/")
        local = (REPO_ROOT / mount_src / image[len(mount_dst) + 1:]).resolve()
        args[args.index("--image") + 1] = str(local)
        question = args[args.index("--question") + 1]
        expected = [q["answer"] for q in QUESTIONS
                    if q["question"] == question and (SAMPLES_DIR / q["image"]).resolve() == local]
        assert expected, "compose.yaml's question is not one of common/models/samples/questions.jsonl"
        result = run([str(bin_dir / "edge-agent"), *args, "--json"], env=installed["env"],
                     cwd=installed["cwd"], timeout=180)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["answer"] == expected[0]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # the image's STOPSIGNAL: drain and exit 0
        assert server.wait(60) == 0


# --------------------------------------------------------------------------------------------
# Compose


@pytest.mark.integration
def test_compose_files_match_the_compose_spec():
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  str(COMPOSE), str(COMPOSE_GPU)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_compose_schema_check_does_catch_mistakes(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:"))
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert result.returncode != 0 and "depend_on" in result.stdout


def test_compose_wiring():
    doc, gpu = compose(), yaml.safe_load(COMPOSE_GPU.read_text())
    targets = set(stages())
    services = doc["services"]
    for name in ("cloud-server", "edge-agent"):
        build = services[name]["build"]
        assert (REPO_ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in targets
    assert services["edge-agent"]["depends_on"]["cloud-server"]["condition"] == "service_healthy"
    assert services["edge-agent"]["restart"] == "no"
    server = services["cloud-server"]
    assert any(str(p).endswith(":50051") for p in server["ports"])
    # The drain must finish before compose's SIGKILL.
    grace = float(server["environment"]["ALIGNEDVQ_GRACE_SECONDS"])
    assert float(server["stop_grace_period"].rstrip("s")) > grace
    for service in (*services.values(), *gpu["services"].values()):
        for name in service.get("environment", {}):
            assert name.removeprefix("ALIGNEDVQ_").lower() in ServerConfig.model_fields, name
    assert set(gpu["services"]) <= set(services)
    devices = gpu["services"]["cloud-server"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


# --------------------------------------------------------------------------------------------
# Kubernetes


def kustomize(path: Path) -> list[dict]:
    result = run([tool("kubectl"), "kustomize", str(path)])
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = {}
    tmp = tmp_path_factory.mktemp("k8s")
    for name, path in (("base", K8S / "base"), ("gpu", K8S / "overlays" / "gpu")):
        docs = kustomize(path)
        file = tmp / f"{name}.yaml"
        file.write_text(yaml.safe_dump_all(docs))
        out[name] = (docs, file)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strictly(rendered, version):
    files = [str(file) for _, file in rendered.values()]
    result = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version,
                  *files])
    assert result.returncode == 0, result.stdout + result.stderr
    # 5 resources per variant, each reported as passed.
    assert result.stdout.count("passed") == 2 * 5, result.stdout


@pytest.mark.integration
def test_validator_does_catch_mistakes(rendered, tmp_path):
    _, file = rendered["base"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(file.read_text().replace("failureThreshold: 2", "failureThresold: 2"))
    result = run([tool("kubernetes-validate"), "--strict", str(bad)])
    assert result.returncode != 0 and "failureThresold" in result.stdout


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.integration
def test_deployment_service_and_hpa_fit_together(rendered):
    docs = by_kind(rendered["base"][0])
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = {p["name"]: p for p in container["ports"]}["grpc"]
    assert port["containerPort"] == 50051
    # Native gRPC probes on the health service, on the serving port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert container["readinessProbe"]["grpc"]["service"] == "alignedvq.v1.InferenceService"
    # Headless Service in front of exactly these pods: clients resolve pod addresses and
    # balance per request.
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert service["spec"]["ports"][0]["port"] == 50051
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], 50051)
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= \
        pod_labels(deployment).items()
    # The image's user, and a drain that ends before SIGKILL.
    uid = [rest for word, rest in dockerfile_instructions() if word == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsUser"] == int(uid)
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in env:
        assert name.removeprefix("ALIGNEDVQ_").lower() in ServerConfig.model_fields, name
    metrics = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert int(env["ALIGNEDVQ_METRICS_PORT"]) == metrics
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == \
        str(metrics)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > float(env["ALIGNEDVQ_GRACE_SECONDS"]) + pre_stop
    # The Service name edge-agent's dns:/// target uses (README, service.yaml).
    assert service["metadata"]["name"] == "alignedvq-cloud"


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


@pytest.mark.integration
def test_gpu_overlay_asks_for_a_gpu(rendered):
    base = by_kind(rendered["base"][0])["Deployment"]["spec"]["template"]["spec"]
    gpu = by_kind(rendered["gpu"][0])["Deployment"]["spec"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in base["containers"][0]["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ALIGNEDVQ_ENGINE"] == "vllm"  # the GPU overlay serves on vLLM
    assert 0 < float(env["ALIGNEDVQ_GPU_MEMORY_UTILIZATION"]) <= 1
    assert container["image"].endswith("-cuda")
    assert {e["name"]: e["value"] for e in container["env"]}["ALIGNEDVQ_DEVICE"] == "cuda"
    # Everything else (probes, security) is inherited from the base.
    assert container["readinessProbe"] == base["containers"][0]["readinessProbe"]
