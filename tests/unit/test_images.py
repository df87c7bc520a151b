"""Third-party images (ambidex/images.py): every image compose runs and the Dockerfile
builds on is found; one pinned by tag only is reported (a warning, never a failure of
the compose check: no digest can be fetched without a registry), and the operator's one
command pins each of them in the file declaring it, as ``name:tag@sha256:...``, leaving
no tag-only image and touching nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ambidex.compose import COMPOSE_FILE, DOCKERFILE, validate
from ambidex.images import DeclaredImage, declared_images, pin_digests, tag_only


def _digest(image: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def test_every_declared_third_party_image_is_found() -> None:
    images = {(i.path.name, i.image) for i in declared_images()}
    assert ("compose.yaml", "apache/kafka:4.1.1") in images
    assert ("compose.yaml", "quay.io/debezium/connect:3.6.1.Final") in images
    assert ("Dockerfile", "python:3.11-slim-bookworm") in images
    assert not any(image.startswith("ambidex") for _, image in images)  # built, not pulled
    assert not any(image == "build" for _, image in images)  # a stage, not an image


def test_tag_only_images_are_a_warning_not_a_failure() -> None:
    assert tag_only(declared_images())  # none could be pinned here
    assert validate() == []


def test_pinning_rewrites_each_image_in_its_file(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(COMPOSE_FILE, compose)
    shutil.copy(DOCKERFILE, dockerfile)
    before = compose.read_text()
    images = declared_images(compose, dockerfile)
    asked: list[str] = []

    def resolve(image: str) -> str:
        asked.append(image)
        return _digest(image)

    pinned = pin_digests(images, resolve)
    assert sorted(asked) == sorted(i.image for i in images)
    assert len(pinned) == len(images)
    after = declared_images(compose, dockerfile)
    assert tag_only(after) == []
    assert {i.image for i in after} == {f"{i.image}@{_digest(i.image)}" for i in images}
    # the postgres image declared twice is pinned in both places, nothing else changed
    text = compose.read_text()
    assert text.count(f"postgres:17.6-bookworm@{_digest('postgres:17.6-bookworm')}") == 2
    for image in images:
        if image.path == compose:
            text = text.replace(f"{image.image}@{_digest(image.image)}", image.image)
    assert text == before
    assert pin_digests(after, resolve) == []  # idempotent: nothing left to ask for


def test_a_registry_answer_that_is_no_digest_is_refused(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11-slim-bookworm\n")
    with pytest.raises(ValueError, match="not a sha256 digest"):
        pin_digests([DeclaredImage(dockerfile, "python:3.11-slim-bookworm")], lambda _: "latest")
    assert dockerfile.read_text() == "FROM python:3.11-slim-bookworm\n"


def test_compose_validate_lists_the_tag_only_images_and_passes() -> None:
    from ambidex.cli import main

    result = CliRunner().invoke(main, ["compose", "validate"])
    assert result.exit_code == 0, result.output
    assert "images pinned by tag, not digest" in result.output
    assert "apache/kafka:4.1.1 (compose.yaml)" in result.output
    assert "bin/ambidex compose pin-digests" in result.output
