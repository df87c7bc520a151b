"""The local stack's schema registry: the Confluent schema registry REST API, Avro only.

Why a registry of our own on the local stack (docs/adr/0002-schema-registry.md):
Apicurio Registry's Maven Central artifacts are not a runnable server (a Quarkus app
needs its build's runner; 3.3.3's classes need Java 21 and one of its modules is not on
Maven Central), Karapace and Confluent's registry are on no package registry this
project can install from. Compose and Kubernetes run Apicurio's official image with its
Confluent-compatible API (``/apis/ccompat/v7``); this server answers the same requests
for the same clients (Ambidex, Confluent's serializers, Flink's ``avro-confluent``):

* ``POST /subjects/<s>/versions`` (register; the same schema again returns its id),
  ``POST /subjects/<s>`` (look up), ``GET /subjects``, ``GET /subjects/<s>/versions``,
  ``GET /subjects/<s>/versions/<n|latest>[/schema]``, ``DELETE /subjects/<s>``;
* ``GET /schemas/ids/<id>[/schema|/versions]``, ``GET /schemas/types``;
* ``GET|PUT /config`` and ``/config/<s>`` (compatibility: NONE, BACKWARD, FORWARD,
  FULL and the ``_TRANSITIVE`` forms; default BACKWARD, as Confluent's);
* ``POST /compatibility/subjects/<s>/versions/<n|latest>``.

One id per schema (by Parsing Canonical Form) across subjects, as Confluent's. The
registry is a JSON file written atomically on every change; errors are Confluent's
``{"error_code", "message"}`` bodies (40401 subject, 40402 version, 40403 schema,
409 incompatible, 42201 invalid schema, 42203 invalid level).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from fastavro.schema import to_parsing_canonical_form

from services.shared.avro_compat import check_compatible

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
LEVELS = frozenset(
    f"{level}{suffix}"
    for level in ("BACKWARD", "FORWARD", "FULL")
    for suffix in ("", "_TRANSITIVE")
) | {"NONE"}


class RegistryState:
    """Schemas by id, subjects as lists of ids, compatibility levels; one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data: dict[str, Any] = {}
        if path.exists():
            data = json.loads(path.read_text())
        self.schemas: dict[int, str] = {int(k): v for k, v in data.get("schemas", {}).items()}
        self.subjects: dict[str, list[int]] = data.get("subjects", {})
        self.config: dict[str, str] = data.get("config", {})
        self.level: str = data.get("level", "BACKWARD")
        self._by_canonical = {self._canonical(t): i for i, t in self.schemas.items()}

    @staticmethod
    def _canonical(text: str) -> str:
        return str(to_parsing_canonical_form(json.loads(text)))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({
            "schemas": self.schemas, "subjects": self.subjects,
            "config": self.config, "level": self.level,
        }))
        os.replace(temporary, self.path)

    def problems(self, subject: str, text: str) -> list[str]:
        """Why ``text`` may not join ``subject`` under its compatibility level."""
        level = self.config.get(subject, self.level)
        versions = self.subjects.get(subject, [])
        if level == "NONE" or not versions:
            return []
        against = versions if level.endswith("_TRANSITIVE") else versions[-1:]
        directions = {"BACKWARD": ("backward",), "FORWARD": ("forward",)}.get(
            level.removesuffix("_TRANSITIVE"), ("backward", "forward")
        )
        new = json.loads(text)
        found: list[str] = []
        for schema_id in against:
            old = json.loads(self.schemas[schema_id])
            if not isinstance(old, dict) or not isinstance(new, dict):
                if self._canonical(self.schemas[schema_id]) != self._canonical(text):
                    found.append("a non-record schema may not change")
                continue
            found += [p for p in check_compatible(old, new) if p.startswith(directions)]
        return found

    def register(self, subject: str, text: str) -> int:
        canonical = self._canonical(text)
        schema_id = self._by_canonical.get(canonical)
        versions = self.subjects.setdefault(subject, [])
        if schema_id is not None and schema_id in versions:
            return schema_id
        if schema_id is None:
            schema_id = max(self.schemas, default=0) + 1
            self.schemas[schema_id] = text
            self._by_canonical[canonical] = schema_id
        versions.append(schema_id)
        self.save()
        return schema_id


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"error_code": code, "message": message}, status=status, content_type=CONTENT_TYPE
    )


def _ok(body: Any) -> web.Response:
    return web.json_response(body, content_type=CONTENT_TYPE)


async def _schema_text(request: web.Request) -> str | web.Response:
    try:
        body = json.loads(await request.read())
        if body.get("schemaType", "AVRO") != "AVRO":
            return _error(422, 42201, f"only AVRO schemas, not {body['schemaType']}")
        text = str(body["schema"])
        RegistryState._canonical(text)
    except Exception as error:
        return _error(422, 42201, f"Invalid schema: {error}")
    return text


def build_app(state: RegistryState) -> web.Application:
    routes = web.RouteTableDef()

    def version_of(subject: str, version: str) -> tuple[int, int] | web.Response:
        versions = state.subjects.get(subject)
        if not versions:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        number = len(versions) if version in ("latest", "-1") else int(version)
        if not 1 <= number <= len(versions):
            return _error(404, 40402, f"Version {version} not found.")
        return number, versions[number - 1]

    @routes.get("/")
    async def root(_: web.Request) -> web.Response:
        return _ok({})

    @routes.get("/schemas/types")
    async def types(_: web.Request) -> web.Response:
        return _ok(["AVRO"])

    @routes.get("/subjects")
    async def subjects(_: web.Request) -> web.Response:
        return _ok(sorted(s for s, v in state.subjects.items() if v))

    @routes.post("/subjects/{subject}/versions")
    async def register(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        text = await _schema_text(request)
        if isinstance(text, web.Response):
            return text
        known = state._canonical(text) in {
            state._canonical(state.schemas[i]) for i in state.subjects.get(subject, [])
        }
        problems = [] if known else state.problems(subject, text)
        if problems:
            level = state.config.get(subject, state.level)
            return _error(409, 409, (
                f"Schema being registered is incompatible with an earlier schema for "
                f"subject \"{subject}\" ({level}): " + "; ".join(problems[:5])
            ))
        return _ok({"id": state.register(subject, text)})

    @routes.post("/subjects/{subject}")
    async def lookup(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        text = await _schema_text(request)
        if isinstance(text, web.Response):
            return text
        versions = state.subjects.get(subject)
        if not versions:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        canonical = state._canonical(text)
        for number, schema_id in enumerate(versions, 1):
            if state._canonical(state.schemas[schema_id]) == canonical:
                return _ok({"subject": subject, "version": number, "id": schema_id,
                            "schema": state.schemas[schema_id]})
        return _error(404, 40403, "Schema not found")

    @routes.get("/subjects/{subject}/versions")
    async def versions(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        if not state.subjects.get(subject):
            return _error(404, 40401, f"Subject '{subject}' not found.")
        return _ok(list(range(1, len(state.subjects[subject]) + 1)))

    @routes.get("/subjects/{subject}/versions/{version}")
    async def version(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        found = version_of(subject, request.match_info["version"])
        if isinstance(found, web.Response):
            return found
        number, schema_id = found
        return _ok({"subject": subject, "version": number, "id": schema_id,
                    "schema": state.schemas[schema_id]})

    @routes.get("/subjects/{subject}/versions/{version}/schema")
    async def version_schema(request: web.Request) -> web.Response:
        found = version_of(request.match_info["subject"], request.match_info["version"])
        if isinstance(found, web.Response):
            return found
        return _ok(json.loads(state.schemas[found[1]]))

    @routes.delete("/subjects/{subject}")
    async def delete(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = state.subjects.pop(subject, None)
        if not versions:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        state.config.pop(subject, None)
        state.save()
        return _ok(list(range(1, len(versions) + 1)))

    @routes.get("/schemas/ids/{id}")
    async def by_id(request: web.Request) -> web.Response:
        text = state.schemas.get(int(request.match_info["id"]))
        if text is None:
            return _error(404, 40403, "Schema not found")
        return _ok({"schema": text})

    @routes.get("/schemas/ids/{id}/schema")
    async def raw_by_id(request: web.Request) -> web.Response:
        text = state.schemas.get(int(request.match_info["id"]))
        if text is None:
            return _error(404, 40403, "Schema not found")
        return _ok(json.loads(text))

    @routes.get("/schemas/ids/{id}/versions")
    async def id_versions(request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        return _ok([
            {"subject": s, "version": n}
            for s, ids in sorted(state.subjects.items())
            for n, i in enumerate(ids, 1) if i == schema_id
        ])

    @routes.get("/config")
    async def get_level(_: web.Request) -> web.Response:
        return _ok({"compatibilityLevel": state.level})

    @routes.put("/config")
    async def put_level(request: web.Request) -> web.Response:
        level = json.loads(await request.read()).get("compatibility", "")
        if level not in LEVELS:
            return _error(422, 42203, f"Invalid compatibility level {level!r}")
        state.level = level
        state.save()
        return _ok({"compatibility": level})

    @routes.get("/config/{subject}")
    async def get_subject_level(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        if subject in state.config:
            return _ok({"compatibilityLevel": state.config[subject]})
        if request.query.get("defaultToGlobal") == "true":
            return _ok({"compatibilityLevel": state.level})
        return _error(404, 40408, f"Subject '{subject}' does not have subject-level "
                      "compatibility configured")

    @routes.put("/config/{subject}")
    async def put_subject_level(request: web.Request) -> web.Response:
        level = json.loads(await request.read()).get("compatibility", "")
        if level not in LEVELS:
            return _error(422, 42203, f"Invalid compatibility level {level!r}")
        state.config[request.match_info["subject"]] = level
        state.save()
        return _ok({"compatibility": level})

    @routes.post("/compatibility/subjects/{subject}/versions/{version}")
    async def compatible(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        text = await _schema_text(request)
        if isinstance(text, web.Response):
            return text
        if state.subjects.get(subject) and request.match_info["version"] not in ("latest", "-1"):
            found = version_of(subject, request.match_info["version"])
            if isinstance(found, web.Response):
                return found
        problems = state.problems(subject, text)
        return _ok({"is_compatible": not problems, "messages": problems})

    app = web.Application()
    app.add_routes(routes)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the registry's JSON file")
    args = parser.parse_args(argv)
    web.run_app(build_app(RegistryState(args.data)), host=args.host, port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
