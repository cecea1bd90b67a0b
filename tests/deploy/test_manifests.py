"""The deployment files, checked without Docker or a cluster (neither runs here).

Kubernetes manifests are validated against the API schemas of Kubernetes 1.37 bundled by
kubernetes-validate (offline, strict: an unknown or misspelt field fails). The Dockerfile
is parsed and held to the rules the image relies on; the compose file, the Prometheus
scrape config and the Procfile are read as data and checked for what makes them work
together (service names, health checks, start order, the metrics token, shared storage).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.37.0"


def _pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == package:
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{package} is not pinned in requirements.txt")


# --- Kubernetes ---------------------------------------------------------------------------------


def _k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs.append((path.name, doc))
    return docs


def _by_kind(kind: str, name: str) -> dict:
    found = [d for _, d in _k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name, doc", _k8s_documents(), ids=lambda v: v if isinstance(v, str) else v.get("kind"))
def test_every_manifest_is_valid_against_the_kubernetes_schema(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field():
    """The schema check above can fail: a typo in a probe's name is caught."""
    web = json.loads(json.dumps(_by_kind("Deployment", "inference-web")))
    _container(web)["readinesProbe"] = _container(web).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(web, K8S_VERSION, strict=True)


def test_the_kustomization_lists_existing_files_and_leaves_out_the_placeholder_secret():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources)
    assert {"configmap.yaml", "web.yaml", "worker.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources  # placeholders must never be applied as they are


def test_web_has_liveness_on_healthz_readiness_on_readyz_and_a_service_and_autoscaler():
    web = _by_kind("Deployment", "inference-web")
    container = _container(web)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == 8000
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    service = _by_kind("Service", "inference-web")
    assert service["spec"]["selector"] == web["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = _by_kind("HorizontalPodAutoscaler", "inference-web")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference-web"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # The web server's graceful timeout fits in the pod's grace period.
    config = _by_kind("ConfigMap", "inference-config")["data"]
    assert int(config["WEB_GRACEFUL_TIMEOUT"]) < web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_probes_and_scrapes_by_pod_ip_are_allowed_hosts():
    """The kubelet and Prometheus send the pod's IP as Host: Django must accept it."""
    env = {e["name"]: e for e in _container(_by_kind("Deployment", "inference-web"))["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    names = list(env)
    assert names.index("POD_IP") < names.index("DJANGO_ALLOWED_HOSTS")  # $(POD_IP) expands only from earlier vars
    assert "$(POD_IP)" in env["DJANGO_ALLOWED_HOSTS"]["value"].split(",")


@pytest.mark.parametrize("name", ["inference-web", "inference-worker", "inference-worker-gpu"])
def test_deployments_read_the_configmap_and_secret_run_as_non_root_with_requests_and_limits(name):
    deployment = _by_kind("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    sources = {(s.get("configMapRef") or s.get("secretRef"))["name"] for s in container["envFrom"]}
    assert sources == {"inference-config", "inference-secrets"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} lacks {kind}"
    # The read-only root filesystem leaves /tmp and the data dir writable.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts
    config = _by_kind("ConfigMap", "inference-config")["data"]
    assert config["INFERENCE_DATA_DIR"] == "/data"


def test_workers_run_qcluster_and_the_gpu_variant_asks_for_a_gpu():
    cpu = _container(_by_kind("Deployment", "inference-worker"))
    gpu_deployment = _by_kind("Deployment", "inference-worker-gpu")
    gpu = _container(gpu_deployment)
    assert cpu["args"] == gpu["args"] == ["worker"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_deployment["spec"]["template"]["spec"]["tolerations"])
    assert gpu["image"].endswith("-cuda") and not cpu["image"].endswith("-cuda")
    # GPU jobs are queued for the GPU workers only; CPU workers take the default queue.
    queues = dict(pair.split("=") for pair in _by_kind("ConfigMap", "inference-config")["data"]
                  ["INFERENCE_JOB_QUEUES"].split(","))
    gpu_env = {e["name"]: e.get("value") for e in gpu["env"]}
    assert gpu_env["INFERENCE_WORKER_QUEUE"] == queues["cuda"]
    assert "INFERENCE_WORKER_QUEUE" not in {e["name"] for e in cpu.get("env", [])}


def test_the_configmap_selects_shared_storage_and_the_redis_broker_and_holds_no_secrets():
    config = _by_kind("ConfigMap", "inference-config")["data"]
    assert config["INFERENCE_STORAGE"] == "s3" and config["INFERENCE_S3_BUCKET"]
    assert config["INFERENCE_BROKER"] == "redis"
    assert config["DJANGO_DEBUG"] == "false"
    secret_keys = set(_by_kind("Secret", "inference-secrets")["stringData"])
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "INFERENCE_METRICS_TOKEN"} <= secret_keys
    assert not secret_keys & set(config)


def test_the_migrate_job_runs_the_release_step():
    job = _by_kind("Job", "inference-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


# --- Dockerfile -----------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments), continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    assert not pending, "a continuation line ends the file"
    return out


def _dockerfile() -> list[tuple[str, str]]:
    return _instructions(DEPLOY / "Dockerfile")


def _arg_defaults(instructions) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)


def test_the_base_image_is_pinned_python_3_11_slim():
    """BASE_IMAGE's default: `make image` passes a local Debian base only where it cannot be pulled."""
    instructions = _dockerfile()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-trixie") in instructions
    (base,) = [a for i, a in instructions if i == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: _arg_defaults(instructions)[m.group(1)], base)
    image, _, tag = base.partition(":")
    assert image == "python"
    assert re.fullmatch(r"3\.11(\.\d+)?-slim-[a-z]+(@sha256:[0-9a-f]{64})?", tag), tag
    requires = re.search(r'requires-python = ">=(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()).group(1)
    assert tag.startswith(requires)


def test_the_image_runs_as_a_non_root_user():
    users = [a for i, a in _dockerfile() if i == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so that runAsNonRoot can verify it
    last_user = max(n for n, (i, _) in enumerate(_dockerfile()) if i == "USER")
    assert not [i for i, _ in _dockerfile()[last_user:] if i == "RUN"], "RUN after USER would run as that user anyway"


def test_torch_is_installed_only_at_the_pinned_version_from_the_pytorch_index():
    runs = [a for i, a in _dockerfile() if i == "RUN"]
    pip_runs = [r for r in runs if "pip install" in r]
    assert any("-r requirements.txt" in r for r in pip_runs)
    torch_installs = [r for r in pip_runs if re.search(r"\btorch\b", r)]
    assert torch_installs, "torch must be installed from the PyTorch index before requirements.txt"
    sources = set()
    for run in torch_installs:
        # Each shell command on its own, the branches of an if/else included.
        for command in re.split(r"&&|;|\bthen\b|\belse\b", run):
            if "pip install" not in command or not re.search(r"\btorch\b", command):
                continue
            # The version comes from requirements.txt itself (one pin for every install path).
            assert "torch==$(sed -n 's/^torch==//p' requirements.txt)" in command or f"torch=={_pinned('torch')}" in command
            # From the PyTorch index, or from a wheel `make image` put in .whl/ (never a bare PyPI torch).
            assert '--index-url "${TORCH_INDEX_URL}"' in command or "--find-links /context/.whl" in command, command
            sources.add("index" if "--index-url" in command else "wheel")
    assert sources == {"index", "wheel"}
    assert _arg_defaults(_dockerfile())["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # The sed expression really yields the pin.
    out = subprocess.run(["sed", "-n", "s/^torch==//p", "requirements.txt"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == _pinned("torch") == "2.13.0"


def test_the_healthcheck_probes_healthz_and_static_files_are_collected_at_build():
    instructions = _dockerfile()
    (healthcheck,) = [a for i, a in instructions if i == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "--interval" in healthcheck
    assert any("collectstatic" in a for i, a in instructions if i == "RUN")
    env = " ".join(a for i, a in instructions if i == "ENV")
    assert "HOST=0.0.0.0" in env and "INFERENCE_STATIC_ROOT=" in env
    assert ("EXPOSE", "8000") in instructions


def test_the_entrypoint_runs_the_web_server_by_default_and_qcluster_for_worker():
    instructions = _dockerfile()
    (entrypoint,) = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for i, a in instructions if i == "CMD"]
    assert cmd == ["web"]
    script = ROOT / entrypoint[0].removeprefix("/app/")
    assert script.is_file() and script.stat().st_mode & 0o111
    # The script's branches, run with `exec` replaced by `echo`: what each would start.
    text = script.read_text().replace("exec ", "echo ")
    for arg, expected in [("web", "python -m inference_platform.serve"),
                          ("worker", "python manage.py qcluster"),
                          ("migrate", "python manage.py migrate --noinput"),
                          ("true", "true")]:
        out = subprocess.run(["sh", "-c", text, "entrypoint", arg], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
    copied = [shlex.split(a)[0] for i, a in instructions if i == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git", "deploy/.env"} <= set(ignored)
    # Of .whl/, only the torch wheel the Dockerfile installs from goes into the context.
    assert ignored.index(".whl/*") < ignored.index("!.whl/torch-*.whl")


def test_python_packages_go_into_a_virtualenv_on_path():
    """A base whose python is Debian's own (PEP 668) refuses a system-wide pip install."""
    instructions = _dockerfile()
    env = " ".join(a for i, a in instructions if i == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    (first_pip,) = [a for i, a in instructions if i == "RUN" and "pip install" in a][:1]
    assert first_pip.index("python3 -m venv /opt/venv") < first_pip.index("pip install")
    assert "--mount=type=bind,target=/context" in first_pip  # .whl/ read from the context, not copied


# --- compose, Prometheus, Procfile ------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_web_worker_postgres_redis_prometheus_with_health_checks():
    services = _compose()["services"]
    assert {"web", "worker", "postgres", "redis", "prometheus", "migrate"} <= set(services)
    for name in ("web", "postgres", "redis", "prometheus"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and not check.get("disable"), name
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    # A worker serves no HTTP: the image's /healthz check would call it unhealthy forever.
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["worker"]["command"] == ["worker"] and services["web"]["command"] == ["web"]


def test_compose_starts_web_and_workers_after_healthy_services_and_a_successful_migrate():
    services = _compose()["services"]
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"] == {"condition": "service_healthy"}
        assert depends["redis"] == {"condition": "service_healthy"}
        assert depends["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_web_and_workers_share_database_redis_and_the_artifact_volume():
    services = _compose()["services"]
    web, worker = services["web"], services["worker"]
    for key in ("DATABASE_URL", "REDIS_URL", "INFERENCE_BROKER", "INFERENCE_MEDIA_ROOT", "DJANGO_SECRET_KEY"):
        assert web["environment"][key] == worker["environment"][key], key
    assert "@postgres:5432/" in web["environment"]["DATABASE_URL"]
    assert web["environment"]["REDIS_URL"].startswith("redis://redis:6379/")
    media = web["environment"]["INFERENCE_MEDIA_ROOT"]
    assert f"media:{media}" in web["volumes"] and f"media:{media}" in worker["volumes"]
    # Several web processes need Redis (each process's rate limits must count in one shared cache).
    assert int(web["environment"]["WEB_CONCURRENCY"]) > 1
    # Secrets have no default: compose refuses to start without them.
    assert ":?" in web["environment"]["DJANGO_SECRET_KEY"]


def test_prometheus_scrapes_the_web_service_with_the_metrics_token_as_bearer():
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    assert compose["secrets"]["metrics_token"] == {"environment": "INFERENCE_METRICS_TOKEN"}
    assert "metrics_token" in prometheus["secrets"]
    assert "${INFERENCE_METRICS_TOKEN" in compose["services"]["web"]["environment"]["INFERENCE_METRICS_TOKEN"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config = yaml.safe_load((DEPLOY / mounted["/etc/prometheus/prometheus.yml"].removeprefix("./")).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "inference-web"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"] and port == "8000"
    allowed = compose["services"]["web"]["environment"]["DJANGO_ALLOWED_HOSTS"]
    assert host in re.sub(r"\$\{\w+:-(.*)\}", r"\1", allowed).split(",")  # Prometheus sends Host: web:8000


def test_the_procfile_declares_web_worker_and_release():
    entries = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    assert set(entries) == {"web", "worker", "release"}
    assert "python -m inference_platform.serve" in entries["web"] and "$" + "{PORT" in entries["web"]
    assert entries["worker"].strip() == "python manage.py qcluster"
    assert entries["release"].strip() == "python manage.py migrate --noinput"
