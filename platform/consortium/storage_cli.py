"""`bcfl store ...`: put, get and verify content-addressed artifacts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from consortium.storage import open_store


@click.group("store")
def store_group() -> None:
    """Put, get and verify artifacts in a content-addressed store (file:///path)."""


@store_group.command("put")
@click.argument("url", envvar="BCFL_STORE")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print content id, sha256 and size as JSON.")
def put_command(url: str, file: Path, as_json: bool) -> None:
    """Store FILE; print its content id (CIDv1, sha2-256)."""
    artifact = open_store(url).put(file.read_bytes())
    click.echo(json.dumps(artifact.__dict__) if as_json else artifact.content_id)


@store_group.command("get")
@click.argument("url", envvar="BCFL_STORE")
@click.argument("content_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of stdout.",
)
def get_command(url: str, content_id: str, output: Path | None) -> None:
    """Fetch CONTENT_ID (its hash is checked before anything is written)."""
    data = open_store(url).get(content_id)
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)


@store_group.command("verify")
@click.argument("url", envvar="BCFL_STORE")
@click.argument("content_ids", nargs=-1)
def verify_command(url: str, content_ids: tuple[str, ...]) -> None:
    """Re-hash CONTENT_IDS (default: every artifact of a file store); exit non-zero on the first bad one."""
    store = open_store(url)
    ids = list(content_ids) or list(getattr(store, "list", list)())
    for cid in ids:
        artifact = store.verify(cid)
        click.echo(f"ok {artifact.content_id} {artifact.size} bytes")
    click.echo(f"{len(ids)} artifacts verify")
