"""The container and Kubernetes files, checked offline (no Docker daemon, no cluster): the
Kubernetes manifests against the API schemas that ship with ``kubernetes-validate``, the compose
file against the Compose Specification schema vendored in ``check-jsonschema``, and both for
what a schema cannot see: names that refer to each other, a shared data volume at the path the
deployments write to, the ledger's PostgreSQL URL reaching the worker and the watcher from a
secret only, and no credential written in any file."""

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
LEDGER = "EVENTPIPE_LEDGER"  # a database URL with its password in it
# Secrets the manifests read, created by hand as 00-namespace.yaml says: (name, key).
SECRETS = {("eventpipe-db", "password"), ("eventpipe-ledger", "url")}
INTERPOLATED = r"\$\{\w+:\?[^}]*\}"  # compose's ${VAR:?message}: from .env, required


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


def created_secrets(text: str) -> dict[str, dict[str, str]]:
    """The ``kubectl create secret generic NAME --from-literal=KEY=VALUE`` commands in
    ``text`` (comment markers and line continuations allowed): ``{NAME: {KEY: VALUE}}``."""
    lines = [re.sub(r"^\s*#", "", line) for line in text.splitlines()]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found: dict[str, dict[str, str]] = {}
    for name, literals in re.findall(
        r"create secret generic ([\w-]+)((?:\s+--from-literal=\S+)+)", joined
    ):
        for key, value in re.findall(r"--from-literal=([\w.-]+)=(\S+)", literals):
            found.setdefault(name, {})[key] = value.strip('"')
    return found


def container_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The one container's ``env`` entries of a pod template, by variable name."""
    (container,) = template["spec"]["containers"]
    return {var["name"]: var for var in container.get("env", [])}


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
            assert (ref["name"], ref["key"]) in SECRETS, name
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
                if SECRETISH.search(var["name"]) or var["name"] == LEDGER:
                    assert "value" not in var, f"{name}: {var['name']} is written in the file"
                    assert "secretKeyRef" in var["valueFrom"], name
    for config_map in by_kind("ConfigMap").values():
        for key, value in config_map["data"].items():
            assert not SECRETISH.search(key), key
            assert key != LEDGER, "the ledger's URL belongs in Secret eventpipe-ledger"
            assert "@" not in value, key  # no user:password@host URL


def test_kubernetes_secrets_are_documented_where_they_are_created() -> None:
    """Every Secret a pod reads is created by a command in 00-namespace.yaml and in
    deployments/README.md, with the key the pods read."""
    for text in (
        (DEPLOYMENTS / "k8s" / "00-namespace.yaml").read_text(),
        (DEPLOYMENTS / "README.md").read_text(),
    ):
        created = created_secrets(text)
        assert {(n, k) for n, keys in created.items() for k in keys} == SECRETS
    referenced = {
        (r["name"], r["key"]) for t in pod_specs().values() for r in walk(t, "secretKeyRef")
    }
    assert referenced == SECRETS


def test_kubernetes_ledger_is_postgresql_from_a_secret() -> None:
    """The worker (whose runs inherit its environment) and the watcher read EVENTPIPE_LEDGER
    from Secret eventpipe-ledger; the URL documented for it names the Service, port, user and
    database the manifests set up, with the password of Secret eventpipe-db."""
    specs = pod_specs()
    for workload in ("eventpipe-worker", "eventpipe-watcher"):
        var = container_env(specs[workload])[LEDGER]
        assert var == {
            "name": LEDGER,
            "valueFrom": {"secretKeyRef": {"name": "eventpipe-ledger", "key": "url"}},
        }, workload
    for name, template in specs.items():
        for source in walk(template, "envFrom"):
            assert all("secretRef" not in s for s in source), name  # only named keys
    # Not in any ConfigMap, under its name or as a value.
    for config_map in by_kind("ConfigMap").values():
        assert LEDGER not in config_map["data"]
        assert not any(re.match(r"postgres\S*://", v) for v in config_map["data"].values())

    config = by_kind("ConfigMap")["eventpipe-config"]["data"]
    created = created_secrets((DEPLOYMENTS / "k8s" / "00-namespace.yaml").read_text())
    url = urlsplit(created["eventpipe-ledger"]["url"])
    assert url.scheme == "postgresql+psycopg"
    assert url.username == config["PREFECT_SERVER_DATABASE_USER"]
    assert url.password == created["eventpipe-db"]["password"]  # the same shell variable
    assert str(url.password).startswith("$")  # ... not a password written in the file
    assert url.hostname == config["PREFECT_SERVER_DATABASE_HOST"]
    assert url.hostname in by_kind("Service")
    assert str(url.port) == config["PREFECT_SERVER_DATABASE_PORT"]
    database = url.path.lstrip("/")
    assert database != config["PREFECT_SERVER_DATABASE_NAME"]  # its own, beside Prefect's
    # The Job creates that database if it is missing, connected as Prefect's user.
    job = specs["eventpipe-ledger-db"]
    script = " ".join(job["spec"]["containers"][0]["command"])
    assert f"CREATE DATABASE {database}" in script
    assert f"datname = '{database}'" in script
    env = container_env(job)
    assert env["PGHOST"]["valueFrom"]["configMapKeyRef"]["key"] == "PREFECT_SERVER_DATABASE_HOST"
    assert env["PGUSER"]["valueFrom"]["configMapKeyRef"]["key"] == "PREFECT_SERVER_DATABASE_USER"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "eventpipe-db",
        "key": "password",
    }


def test_kubernetes_workers_scale_beside_the_watcher() -> None:
    """Claims are atomic in PostgreSQL, so there are several workers; the outputs are still on
    a ReadWriteOnce volume, so all of them stay on the watcher's node."""
    worker = by_kind("Deployment")["eventpipe-worker"]
    assert worker["spec"]["replicas"] >= 2
    affinity = worker["spec"]["template"]["spec"]["affinity"]["podAffinity"]
    (term,) = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert by_kind("PersistentVolumeClaim")["eventpipe-data"]["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    # One watcher per pipeline, and never two at once on the volume.
    watcher = by_kind("Deployment")["eventpipe-watcher"]
    assert watcher["spec"]["replicas"] == 1
    assert watcher["spec"]["strategy"]["type"] == "Recreate"


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
    # Runs read each landed file at the path the watcher recorded (and quarantine it there).
    inbox = watcher["command"][watcher["command"].index("--inbox") + 1]
    (mount,) = [m for m in watcher["volumes"] if m.split(":")[1] == inbox]
    assert mount in worker["volumes"]
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
                assert re.fullmatch(INTERPOLATED, str(value)), f"{name}: {key}"
            # A user:password@host URL takes its password from .env too.
            for password in re.findall(r"://[^:/@\s]+:(.*)@", str(value)):
                assert re.fullmatch(INTERPOLATED, password), f"{name}: {key}"


def test_compose_ledger_is_the_postgres_services_second_database() -> None:
    """The worker and the watcher get the same EVENTPIPE_LEDGER: database ``eventpipe`` of the
    postgres service, as its user, with the password from the variable Prefect's uses, and
    created by the init script the postgres service mounts."""
    services = compose()["services"]
    postgres = services["postgres"]
    urls = {services[name]["environment"][LEDGER] for name in ("worker", "watcher")}
    (url,) = urls
    parts = re.fullmatch(
        rf"postgresql\+psycopg://(?P<user>\w+):(?P<password>{INTERPOLATED})"
        r"@(?P<host>[\w-]+):(?P<port>\d+)/(?P<database>\w+)",
        url,
    )
    assert parts, url
    assert parts["user"] == postgres["environment"]["POSTGRES_USER"]
    assert parts["password"] == postgres["environment"]["POSTGRES_PASSWORD"]
    assert (
        parts["password"]
        == services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_PASSWORD"]
    )
    assert parts["host"] in services
    assert services[parts["host"]]["image"].startswith("postgres")
    assert (
        parts["port"] == services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_PORT"]
    )
    assert parts["database"] != postgres["environment"]["POSTGRES_DB"]  # beside Prefect's
    scripts = [
        m.split(":")[0]
        for m in postgres["volumes"]
        if m.split(":")[1].startswith("/docker-entrypoint-initdb.d/")
    ]
    assert scripts, "postgres mounts no init script"
    created = " ".join((DEPLOYMENTS / s).read_text() for s in scripts)
    assert re.search(rf"^CREATE DATABASE {parts['database']};", created, re.M)
    # Services that don't need the ledger don't get it.
    for name in ("postgres", "prefect-server", "deploy"):
        assert LEDGER not in (services[name].get("environment") or {}), name


def test_the_image_has_the_ledgers_driver() -> None:
    """Every ``uv sync`` of the Dockerfile installs the ``sql`` extra (psycopg 3)."""
    import tomllib

    syncs = [
        line
        for line in (DEPLOYMENTS / "Dockerfile").read_text().splitlines()
        if line.startswith("RUN uv sync")
    ]
    assert len(syncs) == 2
    assert all("--extra sql" in line for line in syncs)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("psycopg") for d in extras["optional-dependencies"]["sql"])


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
