"""The container and Kubernetes files, checked offline (no Docker daemon, no cluster): the
Kubernetes manifests against the API schemas that ship with ``kubernetes-validate``, the compose
file against the Compose Specification schema vendored in ``check-jsonschema``, and both for
what a schema cannot see: names that refer to each other; the data dir a bucket
(``s3://eventpipe/data``) that the bucket job creates, reaching the deploy step, the workers and
the watcher with the endpoint of the MinIO service and keys from a secret only; no volume shared
by a worker and the watcher, no worker pinned to a node, two workers or more; the ledger's
PostgreSQL URL from a secret only; and no credential written in any file."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from eventpipe.core.names import WAKING_EVENTS
from eventpipe.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ROOT / "deployments"
K8S_VERSION = "1.30.0"
SECRETISH = re.compile(
    r"PASSWORD|SECRET|TOKEN|AUTH_STRING|CONNECTION_URL|ACCESS_KEY|ROOT_USER", re.I
)
LEDGER = "EVENTPIPE_LEDGER"  # a database URL with its password in it
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Secrets the manifests read, created by hand as 00-namespace.yaml says: (name, key).
SECRETS = {
    ("eventpipe-db", "password"),
    ("eventpipe-ledger", "url"),
    ("eventpipe-s3", "access-key-id"),
    ("eventpipe-s3", "secret-access-key"),
}
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": {"name": "eventpipe-s3", "key": "access-key-id"},
    "AWS_SECRET_ACCESS_KEY": {"name": "eventpipe-s3", "key": "secret-access-key"},
}
INTERPOLATED = r"\$\{\w+:\?[^}]*\}"  # compose's ${VAR:?message}: from .env, required
# The workloads that use the data dir: their names in Kubernetes and in compose.
K8S_CLIENTS = ("eventpipe-deploy", "eventpipe-worker", "eventpipe-watcher")
COMPOSE_CLIENTS = ("deploy", "worker", "watcher")
PINNED_MINIO = re.compile(r"minio/(minio|mc):RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ")


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


def container(template: dict[str, Any]) -> dict[str, Any]:
    """The one container of a pod template."""
    (only,) = template["spec"]["containers"]
    return dict(only)


def container_env(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The one container's ``env`` entries of a pod template, by variable name."""
    return {var["name"]: var for var in container(template).get("env", [])}


def effective_env(template: dict[str, Any]) -> dict[str, Any]:
    """What the one container's environment holds, by variable name: the text of a ConfigMap
    key (from ``envFrom`` or a ``configMapKeyRef``) or of a ``value``, else the ``valueFrom``
    it is read from (a ``secretKeyRef``)."""
    config_maps = by_kind("ConfigMap")
    env: dict[str, Any] = {}
    for source in container(template).get("envFrom", []):
        env |= config_maps[source["configMapRef"]["name"]]["data"]
    for name, var in container_env(template).items():
        if "value" in var:
            env[name] = var["value"]
        elif "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[name] = config_maps[ref["name"]]["data"][ref["key"]]
        else:
            env[name] = var["valueFrom"]
    return env


def script(command: list[str]) -> str:
    """A container's command as one line (a ``sh -c`` script, or the words themselves)."""
    return " ".join(command)


def option(command: str, flag: str, env: dict[str, Any]) -> str:
    """The value of ``flag`` in the shell line ``command``, with a ``$VAR`` (or compose's
    ``$$VAR``, left to the container's shell) read from ``env``."""
    words = shlex.split(command.replace("$$", "$"))
    value = words[words.index(flag) + 1]
    variable = re.fullmatch(r"\$\{?(\w+)\}?", value)
    return str(env[variable[1]]) if variable else value


def bucket_of(uri: str) -> str:
    parts = urlsplit(uri)
    assert parts.scheme == "s3", uri
    assert parts.path.strip("/"), f"{uri}: no prefix"  # s3://bucket/prefix
    return parts.netloc


def prefect_yaml() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return loaded


def prefect_yaml_pools() -> set[str]:
    return {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}


# -- Kubernetes --------------------------------------------------------------------------------


def claim_templates(workload: str) -> set[str]:
    """The names of a StatefulSet's volumeClaimTemplates (its pods' own claims)."""
    sets = by_kind("StatefulSet")
    if workload not in sets:
        return set()
    return {t["metadata"]["name"] for t in sets[workload]["spec"].get("volumeClaimTemplates", [])}


def claims_of(template: dict[str, Any]) -> set[str]:
    """The PersistentVolumeClaims a pod template mounts by name."""
    return {claim["claimName"] for claim in walk(template, "persistentVolumeClaim")}


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
        assert claims_of(template) <= set(claims), name
        volumes = {v["name"] for v in template["spec"].get("volumes", [])}
        for mount in container(template).get("volumeMounts", []):
            assert mount["name"] in volumes | claim_templates(name), name
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
        for source in walk(template, "envFrom"):
            assert all("secretRef" not in s for s in source), name  # only named keys
    for config_map in by_kind("ConfigMap").values():
        for key, value in config_map["data"].items():
            assert not SECRETISH.search(key), key
            assert key != LEDGER, "the ledger's URL belongs in Secret eventpipe-ledger"
            assert "@" not in value, key  # no user:password@host URL
    # A shell script passes a credential as a variable of its environment, never as text.
    for name, template in pod_specs().items():
        line = script(container(template).get("command", []))
        for match in re.finditer(r"mc alias set \S+ (\S+) (\S+) (\S+)", line):
            for word in match.groups()[1:]:
                assert re.fullmatch(r'"\$\w+"', word), f"{name}: {word}"
                assert SECRETISH.search(word), f"{name}: {word}"


def test_kubernetes_secrets_are_documented_where_they_are_created() -> None:
    """Every Secret a pod reads is created by a command in 00-namespace.yaml and in
    deployments/README.md, with the key the pods read, the secret parts from a shell
    variable rather than written out."""
    for text in (
        (DEPLOYMENTS / "k8s" / "00-namespace.yaml").read_text(),
        (DEPLOYMENTS / "README.md").read_text(),
    ):
        created = created_secrets(text)
        assert {(n, k) for n, keys in created.items() for k in keys} == SECRETS
        assert created["eventpipe-db"]["password"].startswith("$")
        assert created["eventpipe-s3"]["secret-access-key"].startswith("$")
    referenced = {
        (r["name"], r["key"]) for t in pod_specs().values() for r in walk(t, "secretKeyRef")
    }
    assert referenced == SECRETS


def test_kubernetes_ledger_is_postgresql_from_a_secret() -> None:
    """The worker (whose runs inherit its environment), the watcher and the deploy job read
    EVENTPIPE_LEDGER from Secret eventpipe-ledger; the URL documented for it names the Service,
    port, user and database the manifests set up, with the password of Secret eventpipe-db."""
    specs = pod_specs()
    for workload in K8S_CLIENTS:
        var = container_env(specs[workload])[LEDGER]
        assert var == {
            "name": LEDGER,
            "valueFrom": {"secretKeyRef": {"name": "eventpipe-ledger", "key": "url"}},
        }, workload
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
    line = script(container(job)["command"])
    assert f"CREATE DATABASE {database}" in line
    assert f"datname = '{database}'" in line
    env = container_env(job)
    assert env["PGHOST"]["valueFrom"]["configMapKeyRef"]["key"] == "PREFECT_SERVER_DATABASE_HOST"
    assert env["PGUSER"]["valueFrom"]["configMapKeyRef"]["key"] == "PREFECT_SERVER_DATABASE_USER"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "eventpipe-db",
        "key": "password",
    }


def test_kubernetes_workers_scale_on_any_node() -> None:
    """The workers keep nothing (ledger in PostgreSQL, data in the bucket): two or more, not
    pinned to a node or to the watcher's, and no volume but a scratch emptyDir or config."""
    worker = by_kind("Deployment")["eventpipe-worker"]
    assert worker["spec"]["replicas"] >= 2
    pod = worker["spec"]["template"]["spec"]
    for pinning in ("affinity", "nodeSelector", "nodeName"):
        assert pinning not in pod, pinning
    for spread in pod.get("topologySpreadConstraints", []):
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a preference only
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret"}, volume["name"]
    # One watcher per pipeline, and never two at once on its inbox.
    watcher = by_kind("Deployment")["eventpipe-watcher"]
    assert watcher["spec"]["replicas"] == 1
    assert watcher["spec"]["strategy"]["type"] == "Recreate"


def test_kubernetes_no_claim_is_shared_between_workloads() -> None:
    """Every PersistentVolumeClaim is mounted by one workload only; the worker mounts none,
    and the watcher's inbox is a claim of its own."""
    specs = pod_specs()
    users: dict[str, set[str]] = {}
    for name, template in specs.items():
        for claim in claims_of(template):
            users.setdefault(claim, set()).add(name)
    for claim in by_kind("PersistentVolumeClaim"):
        assert len(users.get(claim, set())) == 1, f"{claim}: mounted by {users.get(claim)}"
    assert not claims_of(specs["eventpipe-worker"])
    assert not claims_of(specs["eventpipe-worker"]) & claims_of(specs["eventpipe-watcher"])
    # The watcher's inbox is on its claim.
    watcher = specs["eventpipe-watcher"]
    inbox = effective_env(watcher)["EVENTPIPE_INBOX"]
    volumes = {v["name"]: v for v in watcher["spec"]["volumes"]}
    (mount,) = [
        m
        for m in container(watcher)["volumeMounts"]
        if inbox == m["mountPath"] or inbox.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert claims_of(volumes[mount["name"]]) == claims_of(watcher)
    assert "EVENTPIPE_INBOX" not in effective_env(specs["eventpipe-worker"])


def test_kubernetes_data_is_the_bucket_for_deploy_worker_and_watcher() -> None:
    """EVENTPIPE_DATA is one s3:// URI in all three, with the bucket's endpoint and region;
    the deploy job registers exactly that data dir."""
    specs = pod_specs()
    config = by_kind("ConfigMap")["eventpipe-config"]["data"]
    data = config["EVENTPIPE_DATA"]
    bucket_of(data)
    for workload in K8S_CLIENTS:
        env = effective_env(specs[workload])
        assert env["EVENTPIPE_DATA"] == data, workload
        assert env["AWS_ENDPOINT_URL"] == config["AWS_ENDPOINT_URL"], workload
        assert env["AWS_DEFAULT_REGION"], workload
        line = script(container(specs[workload])["command"])
        if "--data" in line:
            assert option(line, "--data", env) == data, workload
    deploy = specs["eventpipe-deploy"]
    assert "--data" in script(container(deploy)["command"])


def test_kubernetes_bucket_endpoint_is_the_minio_service() -> None:
    """AWS_ENDPOINT_URL names a Service whose port leads to the S3 port of a pinned MinIO."""
    config = by_kind("ConfigMap")["eventpipe-config"]["data"]
    endpoint = urlsplit(config["AWS_ENDPOINT_URL"])
    assert endpoint.scheme == "http"
    assert not endpoint.path.strip("/")
    service = by_kind("Service")[str(endpoint.hostname)]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    selector = service["spec"]["selector"]
    (template,) = [
        t for t in pod_specs().values() if selector.items() <= t["metadata"]["labels"].items()
    ]
    minio = container(template)
    assert PINNED_MINIO.fullmatch(minio["image"]), minio["image"]
    assert minio["image"].startswith("minio/minio:")
    (target,) = [
        p["containerPort"]
        for p in minio["ports"]
        if port["targetPort"] in (p.get("name"), p["containerPort"])
    ]
    command = minio["command"]
    assert "server" in command
    assert command[command.index("--address") + 1] == f":{target}"


def test_kubernetes_aws_keys_come_from_the_secret_minio_uses() -> None:
    """Deploy, worker and watcher read the keys from Secret eventpipe-s3 only, and MinIO's root
    user and password (the ones the bucket job logs in with) are those same keys."""
    specs = pod_specs()
    for workload in K8S_CLIENTS:
        env = container_env(specs[workload])
        for name, ref in S3_KEYS.items():
            assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": ref}}, workload
    for workload in ("minio", "eventpipe-bucket"):
        env = container_env(specs[workload])
        assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == S3_KEYS[AWS_KEYS[0]]
        assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"] == S3_KEYS[AWS_KEYS[1]]
    for config_map in by_kind("ConfigMap").values():
        assert not set(AWS_KEYS) & set(config_map["data"])


def test_kubernetes_bucket_job_creates_the_data_bucket() -> None:
    """The Job logs in to the endpoint the clients use and creates the bucket of
    EVENTPIPE_DATA if it is missing."""
    job = pod_specs()["eventpipe-bucket"]
    config = by_kind("ConfigMap")["eventpipe-config"]["data"]
    assert PINNED_MINIO.fullmatch(container(job)["image"])
    assert container(job)["image"].startswith("minio/mc:")
    line = script(container(job)["command"])
    env = effective_env(job)
    words = shlex.split(line)
    alias = words[words.index("alias") + 2]
    assert option(line, alias, env) == config["AWS_ENDPOINT_URL"]
    assert f"mc mb --ignore-existing {alias}/{bucket_of(config['EVENTPIPE_DATA'])}" in line


def test_kubernetes_deploy_job_registers_the_pipeline_on_the_workers_pool() -> None:
    """The Job creates the pool the workers poll if it is missing, then registers the watcher's
    pipeline there with `eventpipe deploy`; the watcher leaves the runs to the workers."""
    specs = pod_specs()
    worker = container(specs["eventpipe-worker"])["command"]
    pool = worker[worker.index("--pool") + 1]
    assert prefect_yaml_pools() == {pool}  # `prefect deploy --all` agrees
    deploy = specs["eventpipe-deploy"]
    line = script(container(deploy)["command"])
    assert f"prefect work-pool inspect {pool}" in line
    assert f"prefect work-pool create {pool} --type eventpipe" in line
    registers = line[line.index("eventpipe deploy") :]
    env = effective_env(deploy)
    assert option(registers, "--pool", env) == pool
    watcher = specs["eventpipe-watcher"]
    assert option(registers, "--pipeline", env) == effective_env(watcher)["EVENTPIPE_PIPELINE"]
    assert container(watcher)["command"][-2:] == ["--runs", "worker"]


# -- Docker Compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOYMENTS / "docker-compose.yaml").read_text())
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's short-syntax mounts: ``{source: "target[:mode]"}``."""
    return dict(m.split(":", 1) for m in service.get("volumes", []))


def minio_api_port(service: dict[str, Any]) -> int:
    """The S3 port of a ``minio server`` service: --address, else MinIO's default, 9000."""
    command = service["command"]
    assert "server" in command
    address = command[command.index("--address") + 1] if "--address" in command else ":9000"
    return int(address.rsplit(":", 1)[1])


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
    assert set(services) == {
        "postgres",
        "minio",
        "bucket",
        "prefect-server",
        "deploy",
        "worker",
        "watcher",
    }
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
        for source in mounts(service):
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name} publishes beyond this host"
    build = services["prefect-server"]["build"]
    assert (DEPLOYMENTS / build["context"] / build["dockerfile"]).is_file()
    database = services["prefect-server"]["environment"]["PREFECT_SERVER_DATABASE_HOST"]
    assert database in services
    for name in COMPOSE_CLIENTS:
        api = urlsplit(services[name]["environment"]["PREFECT_API_URL"])
        assert api.hostname in services
        assert f"--port {api.port}" in " ".join(services[str(api.hostname)]["command"])


def test_compose_has_no_credentials_in_it() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert re.fullmatch(INTERPOLATED, str(value)), f"{name}: {key}"
            # A user:password@host URL takes its password from .env too.
            for password in re.findall(r"://[^:/@\s]+:(.*)@", str(value)):
                assert re.fullmatch(INTERPOLATED, password), f"{name}: {key}"
        # A script logs in with variables of the container's environment ($$: not
        # interpolated by compose), set from .env above.
        line = script(service.get("command") or [])
        for match in re.finditer(r"mc alias set \S+ (\S+) (\S+) (\S+)", line):
            for word in match.groups()[1:]:
                variable = re.fullmatch(r'"\$\$(\w+)"', word)
                assert variable, f"{name}: {word}"
                value = service["environment"][variable[1]]
                assert re.fullmatch(INTERPOLATED, value), f"{name}: {word}"


def test_compose_ledger_is_the_postgres_services_second_database() -> None:
    """The deploy step, the worker and the watcher get the same EVENTPIPE_LEDGER: database
    ``eventpipe`` of the postgres service, as its user, with the password from the variable
    Prefect's uses, and created by the init script the postgres service mounts."""
    services = compose()["services"]
    postgres = services["postgres"]
    urls = {services[name]["environment"][LEDGER] for name in COMPOSE_CLIENTS}
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
        source
        for source, target in mounts(postgres).items()
        if target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert scripts, "postgres mounts no init script"
    created = " ".join((DEPLOYMENTS / s).read_text() for s in scripts)
    assert re.search(rf"^CREATE DATABASE {parts['database']};", created, re.M)
    # Services that don't need the ledger don't get it.
    for name in set(services) - set(COMPOSE_CLIENTS):
        assert LEDGER not in (services[name].get("environment") or {}), name


def test_compose_data_is_the_bucket_on_the_minio_service() -> None:
    """EVENTPIPE_DATA is one s3:// URI for deploy, worker and watcher (and the one the deploy
    step and the watcher pass as --data), reached at the S3 port of the pinned minio service
    with its root user and password from .env."""
    services = compose()["services"]
    minio = services["minio"]
    data = services["deploy"]["environment"]["EVENTPIPE_DATA"]
    bucket_of(data)
    for name in COMPOSE_CLIENTS:
        env = services[name]["environment"]
        assert env["EVENTPIPE_DATA"] == data, name
        line = script(services[name]["command"])
        if "--data" in line:
            assert option(line, "--data", env) == data, name
        endpoint = urlsplit(env["AWS_ENDPOINT_URL"])
        assert endpoint.scheme == "http", name
        assert not endpoint.path.strip("/"), name
        assert endpoint.hostname == "minio", name
        assert endpoint.port == minio_api_port(minio), name
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"], name
        assert env["AWS_DEFAULT_REGION"], name
    assert "--data" in script(services["deploy"]["command"])
    assert "--data" in services["watcher"]["command"]
    assert PINNED_MINIO.fullmatch(minio["image"])
    assert minio["image"].startswith("minio/minio:")
    assert minio["healthcheck"]["test"]
    assert {target for target in mounts(minio).values()} == {"/data"}  # its own storage


def test_compose_bucket_service_creates_the_data_bucket_first() -> None:
    """The one-shot `bucket` logs in to the clients' endpoint and creates the bucket of
    EVENTPIPE_DATA; worker and watcher start only after it succeeded."""
    services = compose()["services"]
    bucket = services["bucket"]
    assert PINNED_MINIO.fullmatch(bucket["image"])
    assert bucket["image"].startswith("minio/mc:")
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert bucket["restart"] == "no"
    line = script(bucket["command"])
    words = shlex.split(line)
    alias = words[words.index("alias") + 2]
    data = services["worker"]["environment"]["EVENTPIPE_DATA"]
    assert (
        option(line, alias, bucket["environment"])
        == (services["worker"]["environment"]["AWS_ENDPOINT_URL"])
    )
    assert f"mc mb --ignore-existing {alias}/{bucket_of(data)}" in line
    for name in ("worker", "watcher"):
        condition = services[name]["depends_on"]["bucket"]["condition"]
        assert condition == "service_completed_successfully", name


def test_compose_worker_shares_no_volume_with_the_watcher_and_scales() -> None:
    """The worker mounts nothing but the read-only pipelines; the inbox is the watcher's
    alone; nothing stops `docker compose up --scale worker=2`."""
    services = compose()["services"]
    worker, watcher = mounts(services["worker"]), mounts(services["watcher"])
    for source, target in worker.items():
        assert source.startswith("."), f"worker mounts volume {source}"  # no named volume
        assert target.endswith(":ro"), f"worker mounts {source} writable"
    for source in set(worker) & set(watcher):
        assert watcher[source].endswith(":ro"), f"worker and watcher share {source}"
    inbox = services["watcher"]["command"][services["watcher"]["command"].index("--inbox") + 1]
    (source,) = [s for s, t in watcher.items() if t.split(":")[0] == inbox]
    assert source not in worker
    assert not (set(worker) | set(watcher)) & set(compose()["volumes"])
    for pinning in ("container_name", "ports", "hostname"):
        assert pinning not in services["worker"], pinning
    assert services["worker"]["environment"]["EVENTPIPE_PROJECT_DIR"] == "/opt/eventpipe"


def test_compose_deploy_registers_the_pipeline_on_the_workers_pool() -> None:
    """`deploy` creates the worker's pool if it is missing, then `eventpipe deploy` registers
    the watcher's pipeline there; the watcher leaves the runs to the worker."""
    services = compose()["services"]
    worker, watcher, deploy = services["worker"], services["watcher"], services["deploy"]
    pool = worker["command"][worker["command"].index("--pool") + 1]
    assert prefect_yaml_pools() == {pool}  # `prefect deploy --all` agrees
    line = script(deploy["command"])
    assert f"prefect work-pool inspect {pool}" in line
    assert f"prefect work-pool create {pool} --type eventpipe" in line
    registers = line[line.index("eventpipe deploy") :]
    assert option(registers, "--pool", deploy["environment"]) == pool
    pipeline = option(registers, "--pipeline", deploy["environment"])
    assert pipeline == watcher["environment"]["EVENTPIPE_PIPELINE"]
    assert watcher["command"][watcher["command"].index("--runs") + 1] == "worker"


def test_no_s3_key_is_written_in_any_file() -> None:
    """No AWS access key id, and not MinIO's well-known default login, in any deployment
    file or the README."""
    files = [p for p in DEPLOYMENTS.rglob("*") if p.is_file() and p.name != ".env"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text), path
        assert "minioadmin" not in text.lower(), path
        assert not re.search(r"aws_secret_access_key\s*=\s*\S", text, re.I), path


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
    """One deployment per pipeline: named after it, triggered by its landed (and retracting)
    files, with the
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
        # the events that wake a run, as `eventpipe up` and `eventpipe deploy` register them
        assert trigger["expect"] == ["eventpipe.file.landed", "eventpipe.file.retracting"]
        assert set(trigger["expect"]) == set(WAKING_EVENTS)
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
