"""`ambidex manifests` and `ambidex asyncapi`: what platform teams deploy and subscribe
to, rendered from the project's declarations and validated offline."""

from __future__ import annotations

from pathlib import Path

import click

from ambidex.cli_common import progress


# ------------------------------------------------------------------- manifests
@click.group()
def manifests() -> None:
    """Kubernetes manifests (Strimzi and the services): the base in deploy/kubernetes/base/."""


@manifests.command("render")
@click.option("--check", is_flag=True, help="Only report whether the files are up to date.")
def manifests_render(check: bool) -> None:
    """Render deploy/kubernetes/base/ (and components/) from topics.yaml, the connectors
    and the services."""
    from ambidex.manifests import REPO_ROOT, rendered_files, write

    if check:
        stale = [
            str(path.relative_to(REPO_ROOT))
            for path, text in rendered_files().items()
            if not path.exists() or path.read_text() != text
        ]
        if stale:
            raise click.ClickException(
                "stale: " + ", ".join(stale) + " (run: ambidex manifests render)"
            )
        progress("deploy/kubernetes/base and components are up to date")
        return
    for path in write():
        progress(f"wrote {path}")


@click.group()
def asyncapi() -> None:
    """docs/asyncapi.yaml: every published topic as an AsyncAPI 3.0 document."""


@asyncapi.command("render")
@click.option("--check", is_flag=True, help="Only report whether the file is up to date.")
def asyncapi_render(check: bool) -> None:
    """Render docs/asyncapi.yaml from deploy/topics.yaml and schemas/."""
    from importlib.metadata import version

    from ambidex.asyncapi import DOCUMENT, render

    text = render(version("ambidex"))
    if check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            raise click.ClickException(f"stale: {DOCUMENT} (run: ambidex asyncapi render)")
        progress(f"{DOCUMENT} is up to date")
        return
    DOCUMENT.write_text(text)
    progress(f"wrote {DOCUMENT}")


@manifests.command("validate")
def manifests_validate() -> None:
    """kustomize build the base and every overlay, kubeconform -strict against the
    schemas in deploy/kubernetes/schemas/ (offline)."""
    from ambidex.deploycheck import ToolMissing, validate_all

    try:
        verdicts = validate_all()
    except (ToolMissing, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    for verdict in verdicts:
        progress(f"{verdict.source}: {verdict.output.splitlines()[-1] if verdict.output else ''}")
    failed = [v for v in verdicts if not v.ok]
    if failed:
        raise click.ClickException(
            "invalid: " + "; ".join(f"{v.source}:\n{v.output}" for v in failed)
        )


@manifests.command("schemas")
@click.argument("crd_files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def manifests_schemas(crd_files: tuple[str, ...]) -> None:
    """Write deploy/kubernetes/schemas/: the built-in kinds' schemas, and those of the
    kinds the base uses from CRD_FILES (Strimzi's and the Prometheus operator's CRDs)."""
    import yaml

    from ambidex.deploycheck import write_schemas
    from ambidex.manifests import rendered_files

    kinds = {
        document["kind"]
        for text in rendered_files().values()
        for document in yaml.safe_load_all(text)
        if isinstance(document, dict)
    }
    for path in write_schemas([Path(f) for f in crd_files], kinds):
        progress(f"wrote {path}")
