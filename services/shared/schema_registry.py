"""The ecosystem's registry wire format and the registry client that gives it its ids.

A value in the **registry wire format** (what Confluent's serializers, Kafka Connect's
``AvroConverter``, ksqlDB, Flink's ``avro-confluent`` and Kafka UIs read)::

    0x00 | 4-byte big-endian schema id | Avro binary body

The id is the one a Confluent-compatible schema registry gave the writer schema.
Ambidex registers each schema it publishes under the topic's subject
(``TopicNameStrategy``: ``<topic>-value``) with compatibility ``FULL`` at start-up
(:func:`register_subjects`), keeps the ids (:class:`RegistryIds`) and frames with
them; :class:`services.shared.avro.AvroCodec` decodes both this format and Avro
single-object encoding, dispatching on the first byte (``0x00`` here, ``0xC3`` there).

An id this process has not seen is asked of the registry once (``GET
/schemas/ids/<id>``) and matched to the catalogue by its canonical form: Ambidex reads
only schemas it has files for. Credentials (basic auth) are never logged: URLs are
shown without their user information.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

if TYPE_CHECKING:
    from services.shared.avro import AvroCodec, SchemaCatalogue, SchemaEntry
    from services.shared.health import HealthState
    from services.shared.resilience import RetryPolicy
    from services.shared.settings import ServiceSettings

log = logging.getLogger(__name__)

__all__ = [
    "REGISTRY_MAGIC",
    "REGISTRY_PREFIX_LEN",
    "IncompatibleSchema",
    "RegistryIds",
    "RegistryRefused",
    "RegistryUnavailable",
    "SchemaRegistryClient",
    "codec_for",
    "public_url",
    "published_subjects",
    "register_at_start",
    "register_subjects",
    "registry_client",
    "registry_prefix",
    "registry_schema_id",
    "value_subject",
]

REGISTRY_MAGIC = 0
"""First byte of every value in the registry wire format."""
REGISTRY_PREFIX_LEN = 5  # magic (1) + schema id (4)
_MAX_ID = 2**31 - 1  # Java's int: what every registry client reads the id as
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
COMPATIBILITY = "FULL"
"""Compatibility level Ambidex sets on the subjects it publishes to (backward and
forward with the previous version, like the catalogue's own rule)."""


def registry_prefix(schema_id: int) -> bytes:
    """The 5 bytes that open a value written with the schema of id ``schema_id``."""
    if not 0 <= schema_id <= _MAX_ID:
        raise ValueError(f"schema id {schema_id} out of range 0..{_MAX_ID}")
    return bytes((REGISTRY_MAGIC,)) + schema_id.to_bytes(4, "big")


def registry_schema_id(data: bytes) -> int:
    """The schema id of a registry-framed value (caller checked the magic byte)."""
    return int.from_bytes(data[1:REGISTRY_PREFIX_LEN], "big")


def value_subject(topic: str) -> str:
    """The value subject of ``topic`` under ``TopicNameStrategy``."""
    return f"{topic}-value"


def public_url(url: str) -> str:
    """``url`` without user information (what may be logged or shown)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class RegistryUnavailable(ConnectionError):
    """The registry did not answer, or answered with a server error: transient (an
    outage; the kit's retry policy retries it, ``services.shared.resilience``)."""


class RegistryRefused(RuntimeError):
    """The registry answered no (a 4xx other than 'incompatible'): not transient."""

    def __init__(self, message: str, status: int, error_code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


class IncompatibleSchema(RegistryRefused):
    """The registry refused a schema as incompatible with the subject's history (409)."""


class SchemaRegistryClient:
    """The part of the Confluent schema registry REST API Ambidex uses (async for
    start-up, one blocking call for an unseen id while decoding)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.username is not None and username is None:
            username, password = parts.username, parts.password or ""
        self.url = public_url(url).rstrip("/")
        self._auth = httpx.BasicAuth(username, password or "") if username else None
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"SchemaRegistryClient({self.url!r})"

    def _async(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, auth=self._auth, timeout=self._timeout,
                headers={"Accept": CONTENT_TYPE},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = await self._async().request(
                method, path,
                content=None if body is None else json.dumps(body),
                headers=None if body is None else {"Content-Type": CONTENT_TYPE},
            )
        except httpx.HTTPError as error:
            raise RegistryUnavailable(
                f"schema registry {self.url}: {type(error).__name__}: {error}"
            ) from error
        return _answer(self.url, method, path, response)

    async def set_compatibility(self, subject: str, level: str = COMPATIBILITY) -> None:
        await self._call("PUT", f"/config/{quote(subject, safe='')}", {"compatibility": level})

    async def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent); returns its id."""
        answer = await self._call(
            "POST", f"/subjects/{quote(subject, safe='')}/versions",
            {"schema": json.dumps(schema, separators=(",", ":")), "schemaType": "AVRO"},
        )
        return int(answer["id"])

    def schema_text(self, schema_id: int) -> str:
        """The schema of id ``schema_id`` (blocking; once per unseen id a process)."""
        path = f"/schemas/ids/{schema_id}"
        try:
            response = httpx.get(
                self.url + path, auth=self._auth, timeout=self._timeout,
                headers={"Accept": CONTENT_TYPE},
            )
        except httpx.HTTPError as error:
            raise RegistryUnavailable(
                f"schema registry {self.url}: {type(error).__name__}: {error}"
            ) from error
        return str(_answer(self.url, "GET", path, response)["schema"])


def _answer(url: str, method: str, path: str, response: httpx.Response) -> Any:
    if response.status_code >= 500:
        raise RegistryUnavailable(
            f"schema registry {url}: {method} {path}: HTTP {response.status_code}"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        code = body.get("error_code") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else response.text[:300]
        text = f"schema registry {url}: {method} {path}: HTTP {response.status_code}: {message}"
        if response.status_code == 409:
            raise IncompatibleSchema(text, response.status_code, code)
        raise RegistryRefused(text, response.status_code, code)
    return body


class RegistryIds:
    """The registry ids of catalogue schemas this process knows, in both directions.

    Thread-safe: the decode path may run in worker threads.
    """

    def __init__(self, fetch: Callable[[int], str] | None = None) -> None:
        self._fetch = fetch
        self._by_fingerprint: dict[bytes, int] = {}
        self._by_id: dict[int, SchemaEntry] = {}
        self._lock = threading.Lock()

    def remember(self, entry: SchemaEntry, schema_id: int) -> None:
        with self._lock:
            self._by_fingerprint[entry.fingerprint] = schema_id
            self._by_id[schema_id] = entry

    def id_for(self, entry: SchemaEntry) -> int | None:
        return self._by_fingerprint.get(entry.fingerprint)

    def entry_for(self, schema_id: int, catalogue: SchemaCatalogue) -> SchemaEntry | None:
        """The catalogue schema of ``schema_id``: known, or asked of the registry once.

        None when the registry's schema is not one of the catalogue's (a newer schema
        than this checkout has). Raises :class:`RegistryUnavailable` when the registry
        cannot be asked (transient), :class:`RegistryRefused` for an id it does not have.
        """
        entry = self._by_id.get(schema_id)
        if entry is not None or self._fetch is None:
            return entry
        from services.shared.avro import fingerprint

        text = self._fetch(schema_id)
        try:
            found = catalogue.by_fingerprint(fingerprint(json.loads(text)))
        except (ValueError, TypeError, KeyError) as error:
            raise RegistryRefused(
                f"schema id {schema_id}: the registry's schema does not parse: {error}", 200, None
            ) from error
        if found is not None:
            with self._lock:
                self._by_id[schema_id] = found
        return found


async def register_subjects(
    client: SchemaRegistryClient,
    catalogue: SchemaCatalogue,
    subjects: Mapping[str, str],
    ids: RegistryIds,
) -> dict[str, int]:
    """Register the newest version of each ``{subject: schema name}`` with
    compatibility :data:`COMPATIBILITY`, remember the ids; returns ``{subject: id}``.

    Raises :class:`IncompatibleSchema` naming the subject when the registry refuses a
    schema, :class:`RegistryUnavailable` when it cannot be reached.
    """
    registered: dict[str, int] = {}
    for subject, schema_name in sorted(subjects.items()):
        entry = catalogue.latest(schema_name)
        await client.set_compatibility(subject, COMPATIBILITY)
        try:
            schema_id = await client.register(subject, entry.schema)
        except IncompatibleSchema as error:
            raise IncompatibleSchema(
                f"{entry.name} v{entry.version} ({entry.path}) is not {COMPATIBILITY} "
                f"compatible with what subject {subject} holds; {error}",
                error.status, error.error_code,
            ) from error
        ids.remember(entry, schema_id)
        registered[subject] = schema_id
    log.info(
        "schemas registered", extra={"registry": client.url, "subjects": registered}
    )
    return registered


def published_subjects(service_name: str, dead_letter_topic: str) -> dict[str, str]:
    """``{subject: schema name}`` of every topic ``service_name`` publishes: those
    ``deploy/topics.yaml`` names it the producer of, and its dead-letter topic."""
    from ambidex.topics import load_topic_declaration

    subjects = {
        value_subject(spec.name): spec.publication.schema
        for spec in load_topic_declaration()
        if spec.publication is not None and spec.publication.producer == service_name
    }
    subjects[value_subject(dead_letter_topic)] = DEAD_LETTER_SCHEMA_NAME
    return subjects


DEAD_LETTER_SCHEMA_NAME = "ambidex.platform.DeadLetter"
READINESS_CHECK = "schema-registry"


async def register_at_start(
    client: SchemaRegistryClient,
    catalogue: SchemaCatalogue,
    subjects: Mapping[str, str],
    ids: RegistryIds,
    health: HealthState,
    retry: RetryPolicy,
    *,
    refused_delay: float = 30.0,
) -> dict[str, int]:
    """Register ``subjects`` before the service reads or publishes anything.

    An unreachable registry is retried (an outage: ``/readyz`` says so, see
    :class:`~services.shared.resilience.RetryPolicy`); a refusal (an incompatible
    schema, a bad request) fails readiness with the registry's reason and is tried
    again every ``refused_delay`` seconds, since only an operator can resolve it (a
    compatible schema, the subject's compatibility level). Nothing is published in the
    meantime: publishing in a format no consumer can resolve would be worse.
    """
    health.expect(READINESS_CHECK)
    while True:
        try:
            registered = await retry.call(
                lambda: register_subjects(client, catalogue, subjects, ids),
                check=READINESS_CHECK, what=f"registering schemas with {client.url}",
            )
        except RegistryRefused as error:
            health.set_check(READINESS_CHECK, False, f"refused: {error}"[:500])
            log.error(
                "the schema registry refused a schema; not reading or publishing until it "
                "accepts it: %s", error, extra={"registry": client.url},
            )
            await asyncio.sleep(refused_delay)
            continue
        health.set_check(READINESS_CHECK, True, f"{len(registered)} subjects registered")
        return registered


def codec_for(settings: ServiceSettings, catalogue: SchemaCatalogue) -> AvroCodec:
    """The codec ``settings`` ask for: publishing in their wire format, reading both
    (registry-framed values need ``AMBIDEX_SCHEMA_REGISTRY_URL``)."""
    from services.shared.avro import AvroCodec

    ids = None
    if settings.schema_registry_url:
        ids = RegistryIds(registry_client(settings).schema_text)
    return AvroCodec(catalogue, wire=settings.published_wire_format, ids=ids)


def registry_client(settings: ServiceSettings) -> SchemaRegistryClient:
    """The registry client of ``settings`` (which must have a registry URL)."""
    if not settings.schema_registry_url:
        raise ValueError("no schema registry configured (AMBIDEX_SCHEMA_REGISTRY_URL)")
    password = settings.schema_registry_password
    return SchemaRegistryClient(
        settings.schema_registry_url,
        username=settings.schema_registry_username,
        password=None if password is None else password.get_secret_value(),
    )
