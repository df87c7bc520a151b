"""The pod policy every Ambidex service Deployment keeps, in the base and in every overlay
(tests/unit/test_manifests.py, tests/unit/test_kubernetes_overlays.py), and the tools
the manifest tests need."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from ambidex.deploycheck import ToolMissing, tool

#: env names that carry a secret: only ever from a Secret (``secretKeyRef``)
SECRET_NAME = re.compile(r"_(DSN|PASSWORD|SECRET|TOKEN|JAAS_CONFIG)$")
#: a credential written into a plain value (``scheme://user:password@host``)
INLINE_CREDENTIAL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def require_tools() -> None:
    """kustomize and kubeconform, or skip (fail in CI, which installs them)."""
    try:
        tool("kustomize")
        tool("kubeconform")
    except ToolMissing as missing:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(missing))


def pod_policy_violations(deployment: dict[str, Any]) -> list[str]:
    """What the Deployment's pod breaks: probes on the health endpoints, requests and a
    memory limit, non-root with the runtime's seccomp profile and a read-only root, no
    service-account token, no capabilities, secrets only from Secrets. Empty: none."""
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    problems = []
    security = pod.get("securityContext", {})
    if security.get("runAsNonRoot") is not True:
        problems.append("pod may run as root")
    if security.get("seccompProfile") != {"type": "RuntimeDefault"}:
        problems.append("no RuntimeDefault seccomp profile")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("service-account token mounted")
    if len(pod["containers"]) != 1:
        problems.append("not one container")
    for container in pod["containers"]:
        probes = {
            kind: container.get(kind, {}).get("httpGet", {}).get("path")
            for kind in ("livenessProbe", "readinessProbe", "startupProbe")
        }
        if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz",
                      "startupProbe": "/healthz"}:
            problems.append(f"probes {probes}")
        resources = container.get("resources", {})
        if not resources.get("limits", {}).get("memory"):
            problems.append("no memory limit")
        if not {"cpu", "memory"} <= set(resources.get("requests", {})):
            problems.append("no cpu and memory requests")
        context = container.get("securityContext", {})
        if context != {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}}:
            problems.append(f"container security context {context}")
        for env in container.get("env", []):
            value = env.get("value")
            if SECRET_NAME.search(env["name"]) and "secretKeyRef" not in env.get("valueFrom", {}):
                problems.append(f"{env['name']} not from a Secret")
            if isinstance(value, str) and INLINE_CREDENTIAL.search(value):
                problems.append(f"{env['name']} holds a credential")
    return [f"{name}: {problem}" for problem in problems]
