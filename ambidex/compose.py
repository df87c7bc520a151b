"""Static checks of ``deploy/compose/compose.yaml`` (no Docker engine needed; run by
``ambidex compose validate`` in ``bin/ambidex lint``).

1. The file is valid against the Compose specification's JSON schema, shipped in
   ``tests/schemas/compose-spec.json`` (compose-spec/compose-spec ``schema/compose-spec.json``
   at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6; CI has no internet).
2. Policy: every service has a healthcheck, or is a one-shot job (``restart: "no"``)
   that the services depending on it wait for with ``service_completed_successfully``;
   every image is pinned to an exact version (a digest, or a tag with major.minor, never
   ``latest``) unless the service is built from the project's Dockerfile; no secret is
   inline (a password variable or a DSN's password is a ``${VARIABLE}`` reference).
3. One source with the local stack: the broker's and the Connect worker's settings equal
   the local stack's (:func:`ambidex.stack.processes.broker_properties`,
   :func:`ambidex.connectors.connect_worker_config`), and each service gets every
   setting the local stack gives it.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ambidex.jmx_agent import JAR as JMX_AGENT_JAR
from ambidex.stack.config import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
SCHEMA_FILE = REPO_ROOT / "tests" / "schemas" / "compose-spec.json"
DOCKERFILE = REPO_ROOT / "Dockerfile"
ENV_EXAMPLE = COMPOSE_FILE.parent / ".env.example"

_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)
_DSN_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]*)@")
_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")
#: a JAAS login's password or a broker's user_<name> entry
_JAAS_PASSWORD = re.compile(r'(?:password|user_[^=\s"]+)="(?P<password>[^"]*)"')
#: Kafka Connect's ${env:VARIABLE} (``$$`` in a compose file: not interpolated by compose)
_ENV_PROVIDER = re.compile(r"^\$?\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$")
_PINNED_TAG = re.compile(r":[^/:@]*\d+\.\d+[^/:@]*$")
#: broker settings that name this deployment's hosts, ports and paths
_BROKER_LOCAL_ONLY = {
    "listeners",
    "advertised.listeners",
    "controller.quorum.voters",
    "listener.security.protocol.map",
    "log.dirs",
}
#: Connect settings the Debezium image takes under their own variable names
_CONNECT_NAMED = {
    "group.id": "GROUP_ID",
    "config.storage.topic": "CONFIG_STORAGE_TOPIC",
    "offset.storage.topic": "OFFSET_STORAGE_TOPIC",
    "status.storage.topic": "STATUS_STORAGE_TOPIC",
}


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping")
    return document


def schema_problems(document: Mapping[str, Any], schema_file: Path = SCHEMA_FILE) -> list[str]:
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"schema: {'/'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # ["NAME=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def _waited_for_completion(services: Mapping[str, Any], name: str) -> bool:
    dependents = [
        s.get("depends_on")
        for s in services.values()
        if isinstance(s.get("depends_on"), dict) and name in s["depends_on"]
    ]
    return bool(dependents) and all(
        d[name].get("condition") == "service_completed_successfully" for d in dependents
    )


def _secret_problems(name: str, environment: Mapping[str, str]) -> Iterator[str]:
    for variable, value in environment.items():
        if _SECRET_NAME.search(variable) and value and not _REFERENCE.match(value):
            yield f"{name}: {variable} is inline; reference it as ${{VARIABLE}}"
        match = _DSN_PASSWORD.search(value)
        if match and not _REFERENCE.match(match["password"]):
            yield f"{name}: {variable} holds an inline password; use ${{VARIABLE}}"
        for login in _JAAS_PASSWORD.finditer(value):
            if not _REFERENCE.match(login["password"]) and not _ENV_PROVIDER.match(
                login["password"]
            ):
                yield f"{name}: {variable} holds an inline password; use ${{VARIABLE}}"


def policy_problems(document: Mapping[str, Any]) -> list[str]:
    services: Mapping[str, Any] = document.get("services") or {}
    problems = []
    for name, service in services.items():
        healthcheck = service.get("healthcheck") or {}
        if not healthcheck.get("test") or healthcheck.get("disable"):
            job = service.get("restart") == "no" and _waited_for_completion(services, name)
            if not job:
                problems.append(
                    f'{name}: no healthcheck (only a one-shot job, restart "no", that its '
                    "dependents wait for with service_completed_successfully may go without)"
                )
        image = service.get("image")
        if "build" not in service:
            if not image:
                problems.append(f"{name}: neither an image nor a build")
            elif "@sha256:" not in image and not _PINNED_TAG.search(image):
                problems.append(f"{name}: image {image} is not pinned to an exact version")
        problems.extend(_secret_problems(name, _environment(service)))
    return problems


def _dockerfile_environment(dockerfile: Path = DOCKERFILE) -> set[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("ENV "):
            names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    return names


def consistency_problems(document: Mapping[str, Any]) -> list[str]:
    """The broker, the Connect worker and the services against the local stack's."""
    from ambidex.connectors import connect_worker_config
    from ambidex.stack.config import StackConfig
    from ambidex.stack.local import LocalStack
    from ambidex.stack.processes import broker_properties
    from services.registry import available_services

    services: Mapping[str, Any] = document.get("services") or {}
    problems = []
    config = StackConfig(state_dir=Path("/nonexistent"), cache_dir=Path("/nonexistent"))
    kafka = _environment(services.get("kafka", {}))
    for key, value in broker_properties(config, Path("/data")).items():
        if key in _BROKER_LOCAL_ONLY:
            continue
        variable = "KAFKA_" + key.upper().replace(".", "_")
        if kafka.get(variable) != value:
            problems.append(f"kafka: {variable}={kafka.get(variable)!r}, local stack {value!r}")
    connect = _environment(services.get("connect", {}))
    for key, value in connect_worker_config(replication=1).items():
        variable = _CONNECT_NAMED.get(key) or "CONNECT_" + key.upper().replace(".", "_")
        if connect.get(variable) != value:
            problems.append(f"connect: {variable}={connect.get(variable)!r}, local stack {value!r}")
    baked = _dockerfile_environment()
    with tempfile.TemporaryDirectory() as state_dir:
        local = LocalStack(replace(config, state_dir=Path(state_dir)))
        settings = {name: set(local.service_environment(name, 0)) for name in available_services()}
    for name, wanted in settings.items():
        if name not in services:
            problems.append(f"{name}: a service of this build is missing")
            continue
        missing = sorted(wanted - set(_environment(services[name])) - baked)
        if missing:
            problems.append(f"{name}: settings of the local stack missing: {missing}")
    return problems


def security_problems(document: Mapping[str, Any]) -> list[str]:
    """Kafka requires a login on every reachable listener and every client has one
    (:mod:`ambidex.compose_kafka`)."""
    from ambidex.compose_kafka import kafka_security_problems

    services: Mapping[str, Any] = document.get("services") or {}
    environments = {name: _environment(service) for name, service in services.items()}
    return kafka_security_problems(services, environments)


_REQUIRED_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?")


def env_example_problems(compose_text: str, example: Path = ENV_EXAMPLE) -> list[str]:
    """Every variable the file requires (``${NAME:?...}``) is listed in .env.example,
    so an operator who fills it in starts a complete deployment."""
    listed = {
        line.split("=", 1)[0].strip()
        for line in example.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    required = set(_REQUIRED_VARIABLE.findall(compose_text))
    missing = sorted(required - listed)
    return [f"{example.name}: {name} is required but not listed" for name in missing]


_JAVAAGENT = re.compile(r"-javaagent:(?P<jar>[^=\s]+)=(?P<port>\d+):(?P<rules>\S+)")
#: the JVM services whose JMX exporter agent Prometheus scrapes, and their rule files
_JMX_RULES = {"kafka": "kafka.yaml", "connect": "connect.yaml"}


def _mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """``{container path: source}`` of the service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and ":" in volume:
            source, target = volume.split(":")[:2]
            found[target.rstrip("/")] = source.rstrip("/")
    return found


def _mounted_from(mounts: Mapping[str, str], path: str) -> tuple[str, str] | None:
    """``(source, path inside it)`` of the mount ``path`` lies in."""
    for target, source in mounts.items():
        if path.startswith(target + "/"):
            return source, path[len(target) + 1 :]
    return None


def monitoring_problems(document: Mapping[str, Any]) -> list[str]:
    """Prometheus loads both rule files and reaches each scrape target: a compose
    service, and for Kafka and Connect the JMX exporter agent on the scraped port with
    its rule file of deploy/monitoring/jmx, the jar from the volume a job running
    ``ambidex.jmx_agent`` fills."""
    from ambidex.monitoring import COMPOSE_PIPELINE_JOBS, expected_scrape_jobs, rule_files

    services: Mapping[str, Any] = document.get("services") or {}
    problems = []
    if "pipeline-alerts.yaml" not in rule_files():
        problems.append("prometheus: the pipeline alerts (pipeline-alerts.yaml) are not loaded")
    fetched = {
        _mounts(service).get("/state")
        for service in services.values()
        if "ambidex.jmx_agent" in (service.get("entrypoint") or [])
    } - {None}
    for job, target in expected_scrape_jobs().items():
        host, port = target.rsplit(":", 1)
        if host not in services:
            problems.append(f"prometheus: job {job} scrapes {target}, no such service")
            continue
        if job not in COMPOSE_PIPELINE_JOBS or host not in _JMX_RULES:
            continue
        agent = _JAVAAGENT.search(_environment(services[host]).get("KAFKA_OPTS", ""))
        if agent is None:
            problems.append(f"{host}: no JMX exporter agent (-javaagent in KAFKA_OPTS)")
            continue
        if agent["port"] != port:
            problems.append(f"{host}: the JMX agent serves {agent['port']}, scraped on {port}")
        mounts = _mounts(services[host])
        rules = _mounted_from(mounts, agent["rules"])
        if rules != ("../monitoring/jmx", _JMX_RULES[host]):
            problems.append(
                f"{host}: the JMX agent's rules {agent['rules']} are not "
                f"deploy/monitoring/jmx/{_JMX_RULES[host]}"
            )
        jar = _mounted_from(mounts, agent["jar"])
        if jar is None or jar[0] not in fetched:
            problems.append(
                f"{host}: the JMX agent's jar {agent['jar']} is not in the volume the "
                "jmx-agent job (python -m ambidex.jmx_agent) fills"
            )
        elif jar[1] != JMX_AGENT_JAR:
            problems.append(
                f"{host}: the JMX agent's jar is {jar[1]}, the job fetches {JMX_AGENT_JAR}"
            )
    return problems


def validate(path: Path = COMPOSE_FILE) -> list[str]:
    document = load_compose(path)
    return [
        *schema_problems(document),
        *policy_problems(document),
        *consistency_problems(document),
        *security_problems(document),
        *monitoring_problems(document),
        *env_example_problems(path.read_text(), path.parent / ".env.example"),
    ]
