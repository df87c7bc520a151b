"""The third-party images Ambidex runs on, and pinning them by digest.

Declared in two places: ``deploy/compose/compose.yaml`` (each service's ``image``, not
those built from the project's Dockerfile) and the ``Dockerfile`` (``FROM`` and
``COPY --from=`` images). They are pinned to exact tags; a digest needs a container
registry, which the machine that wrote them could not reach, and a digest nobody fetched
is worse than none. So ``ambidex compose validate`` lists every tag-only image as a
warning (:func:`tag_only`), and an operator with registry access pins all of them with
one command, ``bin/ambidex compose pin-digests`` (:func:`pin_digests`): each image's
digest from the registry (``docker buildx imagetools inspect``: the multi-platform
index's digest, so every platform still pulls its own image), written as
``name:tag@sha256:...`` (the tag stays for people; the digest is what is pulled).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ambidex.compose import COMPOSE_FILE, DOCKERFILE

_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(?P<image>\S+)", re.IGNORECASE)
_COPY_FROM = re.compile(r"--from=(?P<image>\S+)")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class DeclaredImage:
    path: Path
    image: str

    @property
    def pinned_by_digest(self) -> bool:
        return "@sha256:" in self.image


def compose_images(path: Path = COMPOSE_FILE) -> list[DeclaredImage]:
    services = (yaml.safe_load(path.read_text()) or {}).get("services") or {}
    images = {s["image"] for s in services.values() if "build" not in s and s.get("image")}
    return [DeclaredImage(path, image) for image in sorted(images)]


def dockerfile_images(path: Path = DOCKERFILE) -> list[DeclaredImage]:
    stages: set[str] = set()
    found: list[str] = []
    for line in path.read_text().splitlines():
        if match := _FROM.match(line):
            found.append(match["image"])
            stage = re.search(r"\s+AS\s+(\S+)", line, re.IGNORECASE)
            if stage:
                stages.add(stage[1].lower())
        elif line.lstrip().upper().startswith("COPY") and (match := _COPY_FROM.search(line)):
            found.append(match["image"])
    # a COPY --from= naming a build stage is no image
    images = [image for image in found if image.lower() not in stages]
    return [DeclaredImage(path, image) for image in dict.fromkeys(images)]


def declared_images(
    compose: Path = COMPOSE_FILE, dockerfile: Path = DOCKERFILE
) -> list[DeclaredImage]:
    return [*compose_images(compose), *dockerfile_images(dockerfile)]


def tag_only(images: Iterable[DeclaredImage]) -> list[DeclaredImage]:
    """The images pinned by tag but not by digest."""
    return [image for image in images if not image.pinned_by_digest]


def registry_digest(image: str) -> str:
    """The digest the registry serves for ``image`` (needs Docker with buildx and access
    to the registry)."""
    output = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", image, "--format", "{{json .Manifest}}"],
        capture_output=True, text=True, check=True,
    ).stdout
    digest = str(json.loads(output)["digest"])
    if not _DIGEST.match(digest):
        raise ValueError(f"{image}: the registry answered {digest!r}, not a sha256 digest")
    return digest


def _reference(image: str) -> re.Pattern[str]:
    """``image`` as a whole token (not a prefix of a longer name or tag)."""
    return re.compile(rf"(?<![\w.:/@-]){re.escape(image)}(?![\w.:/@-])")


def pin_digests(
    images: Iterable[DeclaredImage],
    resolve: Callable[[str], str] = registry_digest,
) -> list[str]:
    """Rewrite each tag-only image as ``image@digest`` in the file declaring it; returns
    one line per image pinned."""
    pinned: list[str] = []
    texts: dict[Path, str] = {}
    for declared in tag_only(images):
        digest = resolve(declared.image)
        if not _DIGEST.match(digest):
            raise ValueError(f"{declared.image}: {digest!r} is not a sha256 digest")
        text = texts.get(declared.path, declared.path.read_text())
        texts[declared.path] = _reference(declared.image).sub(f"{declared.image}@{digest}", text)
        pinned.append(f"{declared.path.name}: {declared.image}@{digest}")
    for path, text in texts.items():
        path.write_text(text)
    return pinned
