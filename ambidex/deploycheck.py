"""Structural validation of the Kubernetes overlays, offline.

Every overlay in ``deploy/kubernetes/overlays/`` is rendered with ``kustomize build`` and
checked by ``kubeconform -strict`` (unknown fields are errors) against the JSON schemas
shipped in ``deploy/kubernetes/schemas/`` — CI has no internet. The schemas are made
here: the Kubernetes ones from the strict schemas the ``kubernetes-validate`` package
ships (their shared definitions inlined, so each file stands alone), the custom
resources' (Strimzi v1, Prometheus operator) from their CRDs, as kubeconform's
``openapi2jsonschema`` does. Only the kinds the manifests use are kept.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
SCHEMA_DIR = KUBERNETES_DIR / "schemas"
OVERLAYS_DIR = KUBERNETES_DIR / "overlays"
#: the Kubernetes version whose schemas are shipped
KUBERNETES_VERSION = "1.33.0"
#: kubeconform's file name template (kind and group/version suffix, as
#: ``deployment-apps-v1.json``, ``kafka-kafka-v1.json``)
SCHEMA_LOCATION = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
#: where .ci/run installs the Go tools (go install with pinned versions)
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
KUBERNETES_KINDS = (
    ("Namespace", "v1"),
    ("ConfigMap", "v1"),
    ("ServiceAccount", "v1"),
    ("Service", "v1"),
    ("Deployment", "apps/v1"),
    ("PodDisruptionBudget", "policy/v1"),
    ("NetworkPolicy", "networking.k8s.io/v1"),
    ("Ingress", "networking.k8s.io/v1"),
    ("HorizontalPodAutoscaler", "autoscaling/v2"),
)


def schema_file(kind: str, api_version: str) -> str:
    """kubeconform's name for the schema of ``kind`` in ``api_version``."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


# ------------------------------------------------------------------ schemas


def _kubernetes_schema_root(version: str) -> Path:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Path(str(root)) / f"v{version}-local-strict"


def kubernetes_schema(kind: str, api_version: str, version: str = KUBERNETES_VERSION) -> Any:
    """The strict schema of one built-in kind with the definitions it uses inlined."""
    root = _kubernetes_schema_root(version)
    schema = json.loads((root / schema_file(kind, api_version)).read_text())
    definitions = json.loads((root / "_definitions.json").read_text())["$defs"]
    # the kind's file refers to the shared file, definitions there to each other
    prefixes = ("/api/_definitions.json#/$defs/", "#/$defs/")
    needed: dict[str, Any] = {}

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefixes):
                name = ref.split("/")[-1]
                if name not in needed:
                    needed[name] = None
                    needed[name] = rewrite(definitions[name])
                node = {**node, "$ref": f"#/definitions/{name}"}
            return {key: rewrite(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        return node

    standalone = rewrite(schema)
    standalone["definitions"] = dict(sorted(needed.items()))
    return standalone


def _strict(node: Any, branch: bool = False) -> Any:
    """openapi2jsonschema's strict conversion: objects with declared properties accept
    no others (unless they preserve unknown fields), int-or-string is either. The
    branches of a oneOf/anyOf/allOf only say which properties are required: they stay
    open, the object around them is closed."""
    if isinstance(node, list):
        return [_strict(value, branch) for value in node]
    if not isinstance(node, dict):
        return node
    node = {
        key: _strict(value, branch=key in {"oneOf", "anyOf", "allOf"})
        for key, value in node.items()
    }
    if node.pop("x-kubernetes-int-or-string", False) or node.get("format") == "int-or-string":
        node.pop("format", None)
        node.pop("type", None)
        node["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and not (preserve or branch) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


def crd_schemas(documents: Iterable[Any], kinds: set[str]) -> dict[str, Any]:
    """File name -> strict JSON schema of each served version of the CRDs of ``kinds``."""
    schemas: dict[str, Any] = {}
    for crd in documents:
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        kind = spec["names"]["kind"]
        if kind not in kinds:
            continue
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            api_version = f"{spec['group']}/{version['name']}"
            schema = _strict(version["schema"]["openAPIV3Schema"])
            properties = schema.setdefault("properties", {})
            properties["apiVersion"] = {"type": "string", "enum": [api_version]}
            properties["kind"] = {"type": "string", "enum": [kind]}
            properties["metadata"] = {"type": "object"}
            schemas[schema_file(kind, api_version)] = schema
    return schemas


def write_schemas(
    crd_files: Iterable[Path], kinds: set[str], output: Path = SCHEMA_DIR
) -> list[Path]:
    """Write the built-in kinds' schemas and those of ``kinds`` found in ``crd_files``."""
    output.mkdir(parents=True, exist_ok=True)
    schemas = {schema_file(k, v): kubernetes_schema(k, v) for k, v in KUBERNETES_KINDS}
    for path in crd_files:
        schemas.update(crd_schemas(yaml.safe_load_all(path.read_text()), kinds))
    written = []
    for name, schema in sorted(schemas.items()):
        path = output / name
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


# --------------------------------------------------------------- validation


class ToolMissing(RuntimeError):
    """kustomize or kubeconform is not installed (.ci/run installs both)."""


def tool(name: str) -> str:
    """Path of ``name``: the pinned one .ci/run installs in .tools/bin, else PATH."""
    pinned = TOOLS_BIN / name
    if pinned.exists():
        return str(pinned)
    found = shutil.which(name)
    if found is None:
        raise ToolMissing(f"{name} is not installed (bash .ci/run installs it in {TOOLS_BIN})")
    return found


@dataclass(frozen=True)
class Verdict:
    source: str
    ok: bool
    output: str


def build(kustomization: Path) -> str:
    """``kustomize build`` of one overlay (or base) directory."""
    result = subprocess.run(
        [tool("kustomize"), "build", str(kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kustomize build {kustomization} failed: {result.stderr.strip()}")
    return result.stdout


def kubeconform(manifests: str, source: str, schemas: Path = SCHEMA_DIR) -> Verdict:
    """kubeconform -strict over ``manifests`` with only the shipped schemas: a kind
    without a schema is an error too, never skipped."""
    result = subprocess.run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-output",
            "text",
            "-schema-location",
            str(schemas / SCHEMA_LOCATION),
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
    )
    return Verdict(source, result.returncode == 0, (result.stdout + result.stderr).strip())


def overlays() -> list[Path]:
    return sorted(p.parent for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def validate_all() -> list[Verdict]:
    """Render and validate the base and every overlay."""
    targets = [KUBERNETES_DIR / "base", *overlays()]
    return [kubeconform(build(t), str(t.relative_to(REPO_ROOT))) for t in targets]
