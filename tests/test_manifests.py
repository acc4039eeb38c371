"""The container and Kubernetes files, checked offline (no Docker daemon, no cluster): the
Kubernetes manifests against the API schemas that ship with ``kubernetes-validate``, the compose
file against the Compose Specification schema vendored in ``check-jsonschema``, and both for
what a schema cannot see: names that refer to each other, a shared data volume at the path the
deployments write to, and no credential written in any file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from eventpipe.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ROOT / "deployments"
K8S_VERSION = "1.30.0"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|CONNECTION_URL", re.I)


def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOYMENTS / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in k8s_objects() if d["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template, by its workload's name."""
    specs = {}
    for _, doc in k8s_objects():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]
    return specs


def walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in ``node``."""
    out: list[Any] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append(v)
            out += walk(v, key)
    elif isinstance(node, list):
        for item in node:
            out += walk(item, key)
    return out


def prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return loaded


# -- Kubernetes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "doc"),
    k8s_objects(),
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in k8s_objects()],
)
def test_each_kubernetes_object_is_valid_against_the_api_schema(
    file: str, doc: dict[str, Any]
) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace") == "eventpipe", file


def test_kubernetes_references_resolve() -> None:
    config_maps, claims, services = (
        by_kind("ConfigMap"),
        by_kind("PersistentVolumeClaim"),
        by_kind("Service"),
    )
    specs = pod_specs()
    for name, template in specs.items():
        for ref in walk(template, "configMapRef"):
            assert ref["name"] in config_maps, name
        for ref in walk(template, "configMapKeyRef"):
            assert ref["key"] in config_maps[ref["name"]]["data"], name
        for ref in walk(template, "secretKeyRef"):
            # Created by hand (00-namespace.yaml says how), never stored in these files.
            assert (ref["name"], ref["key"]) == ("eventpipe-db", "password"), name
        for claim in walk(template, "persistentVolumeClaim"):
            assert claim["claimName"] in claims, name
    labels = [t["metadata"]["labels"] for t in specs.values()]
    for name, service in services.items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= lab.items() for lab in labels), f"Service {name}"
    # Clients reach the server through its Service.
    api = urlsplit(config_maps["eventpipe-config"]["data"]["PREFECT_API_URL"])
    ports = [p["port"] for p in services[str(api.hostname)]["spec"]["ports"]]
    assert api.port in ports
    database = config_maps["eventpipe-config"]["data"]["PREFECT_SERVER_DATABASE_HOST"]
    assert database in services


def test_kubernetes_has_no_credentials_in_it() -> None:
    assert "Secret" not in {d["kind"] for _, d in k8s_objects()}
    for name, template in pod_specs().items():
        for env in walk(template, "env"):
            for var in env:
                if SECRETISH.search(var["name"]):
                    assert "value" not in var, f"{name}: {var['name']} is written in the file"
                    assert "secretKeyRef" in var["valueFrom"], name
    for key, value in by_kind("ConfigMap")["eventpipe-config"]["data"].items():
        assert not SECRETISH.search(key), key
        assert "@" not in value, key  # no user:password@host URL


def test_worker_and_watcher_share_the_data_volume_where_the_deployments_write() -> None:
    specs = pod_specs()
    config = by_kind("ConfigMap")["eventpipe-config"]["data"]

    def data_mount(workload: str) -> str:
        """Where the workload mounts the shared claim, checked to hold the data dir."""
        (mount,) = walk(specs[workload], "volumeMounts")[0]
        assert config["EVENTPIPE_DATA"].startswith(mount["mountPath"] + "/"), workload
        assert config["EVENTPIPE_INBOX"].startswith(mount["mountPath"] + "/"), workload
        return str(mount["mountPath"])

    assert data_mount("eventpipe-worker") == data_mount("eventpipe-watcher")
    claims = {w: walk(specs[w], "claimName") for w in ("eventpipe-worker", "eventpipe-watcher")}
    assert claims["eventpipe-worker"] == claims["eventpipe-watcher"] == ["eventpipe-data"]
    # A ReadWriteOnce claim and SQLite: the worker runs on the watcher's node.
    affinity = specs["eventpipe-worker"]["spec"]["affinity"]["podAffinity"]
    selector = affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]
    watcher_labels = specs["eventpipe-watcher"]["metadata"]["labels"]
    assert selector["matchLabels"].items() <= watcher_labels.items()
    # The worker polls the pool the deployments are on; the watcher leaves the runs to it.
    pools = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    command = specs["eventpipe-worker"]["spec"]["containers"][0]["command"]
    assert pools == {command[command.index("--pool") + 1]}
    assert specs["eventpipe-watcher"]["spec"]["containers"][0]["command"][-2:] == [
        "--runs",
        "worker",
    ]


# -- Docker Compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOYMENTS / "docker-compose.yaml").read_text())
    return loaded


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOYMENTS / "docker-compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_refer_to_each_other() -> None:
    spec = compose()
    services, volumes = spec["services"], spec["volumes"]
    assert set(services) == {"postgres", "prefect-server", "deploy", "worker", "watcher"}
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name} publishes beyond this host"
    build = services["prefect-server"]["build"]
    assert (DEPLOYMENTS / build["context"] / build["dockerfile"]).is_file()
    database = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_HOST"]
    assert database in services
    for name in ("deploy", "worker", "watcher"):
        api = urlsplit(services[name]["environment"]["PREFECT_API_URL"])
        assert api.hostname in services
        assert f"--port {api.port}" in " ".join(services[str(api.hostname)]["command"])


def test_compose_worker_and_watcher_share_the_data_dir_and_pool() -> None:
    services = compose()["services"]
    worker, watcher, deploy = services["worker"], services["watcher"], services["deploy"]
    data = deploy["environment"]["EVENTPIPE_DATA"]  # what `prefect deploy` writes into runs
    assert f"data:{data}" in worker["volumes"]
    assert f"data:{data}" in watcher["volumes"]
    assert watcher["command"][watcher["command"].index("--data") + 1] == data
    assert worker["environment"]["EVENTPIPE_PROJECT_DIR"] == "/opt/eventpipe"
    pools = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    assert pools == {worker["command"][worker["command"].index("--pool") + 1]}
    assert "prefect --no-prompt deploy --all" in " ".join(deploy["command"])
    assert "--runs" in watcher["command"]
    assert watcher["command"][watcher["command"].index("--runs") + 1] == "worker"


def test_compose_has_no_credentials_in_it() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}: {key}"


# -- prefect.yaml ------------------------------------------------------------------------------


def test_each_prefect_yaml_deployment_wakes_on_its_own_pipeline() -> None:
    """One deployment per pipeline: named after it, triggered by its landed files, with the
    data dir and project dir left to the environment."""
    config = prefect_yaml()
    pull = config["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $EVENTPIPE_PROJECT_DIR }}"
    for deployment in config["deployments"]:
        pipeline = load_pipeline(deployment["parameters"]["pipeline"])
        assert deployment["name"] == pipeline.name
        assert deployment["entrypoint"] == "eventpipe.flows.materialize_pipeline"
        assert deployment["parameters"]["data"] == "{{ $EVENTPIPE_DATA }}"
        (trigger,) = deployment["triggers"]
        assert trigger["expect"] == ["eventpipe.file.landed"]
        assert trigger["match"] == {"eventpipe.pipeline": pipeline.name, "eventpipe.wake": "true"}


def test_prefect_yaml_fetch_example_matches_what_up_registers() -> None:
    """The commented fetch example, uncommented, is a deployment of the `fetch` flow with the
    flow's parameters and a schedule, named as `eventpipe up` names it."""
    import inspect

    from eventpipe.orchestration.deploy import fetch_deployment_name
    from eventpipe.run.fetch import fetch_source

    text = (ROOT / "prefect.yaml").read_text()
    start = text.index("  # - name: orders_api-orders")
    example = "\n".join(line.replace("  # ", "  ", 1) for line in text[start:].splitlines())
    (deployment,) = yaml.safe_load("deployments:\n" + example)["deployments"]
    assert deployment["name"] == fetch_deployment_name("orders_api", "orders")
    module, _, name = deployment["entrypoint"].rpartition(".")
    assert (module, name) == ("eventpipe.flows", "fetch_source")
    parameters = inspect.signature(fetch_source.fn).parameters
    assert set(deployment["parameters"]) == set(parameters)
    assert deployment["parameters"]["data"] == "{{ $EVENTPIPE_DATA }}"
    assert deployment["schedules"] == [{"interval": 10, "timezone": "UTC", "slug": "orders"}]
    assert "triggers" not in deployment
