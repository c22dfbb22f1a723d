"""The HE public surface (privacy.he) stays apart from the key holders' (privacy.he.keyholder)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from privacy import he
from privacy.he import keyholder

PUBLIC_MODULES = (
    "privacy.he",
    "privacy.he.aggregation",
    "privacy.he.context",
    "privacy.he.format",
    "privacy.he.presets",
    "privacy.he.vectors",
)

# Runs in a fresh interpreter: import the public surface, use it as the coordinator does (load
# the public context, check and sum updates), then report which privacy.he modules got loaded.
PUBLIC_ONLY = textwrap.dedent(
    """
    import importlib, json, sys
    from pathlib import Path
    for name in sys.argv[2:]:
        importlib.import_module(name)
    from privacy import he
    folder = Path(sys.argv[1])
    ctx = he.load_public_context((folder / "public.ctx").read_bytes(), he.DEFAULT_PRESET)
    update = (folder / "update.bin").read_bytes()
    he.decode_container(update, ctx.preset, kind=he.Kind.UPDATE)
    total = he.aggregate(ctx, [update, update])
    print(json.dumps({
        "modules": sorted(m for m in sys.modules if m.startswith("privacy")),
        "summands": he.peek_header(total)["n_summands"],
    }))
    """
)


def test_public_surface_never_loads_the_keyholder_modules(secret_ctx, public_ctx, tmp_path):
    (tmp_path / "public.ctx").write_bytes(public_ctx.public_bytes())
    (tmp_path / "update.bin").write_bytes(keyholder.encrypt_update(secret_ctx, np.ones(100)))
    out = subprocess.run(
        [sys.executable, "-c", PUBLIC_ONLY, str(tmp_path), *PUBLIC_MODULES],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert report["summands"] == 2
    assert set(PUBLIC_MODULES) <= set(report["modules"])
    loaded = [m for m in report["modules"] if m.startswith("privacy.he.keyholder")]
    assert loaded == [], f"the public HE surface imported key-holder modules: {loaded}"


@pytest.mark.parametrize("name", ["decrypt", "encrypt_update", "generate_context", "open_envelope"])
def test_moved_names_point_to_the_keyholder_surface(name):
    assert not hasattr(he, name)
    with pytest.raises(AttributeError, match="privacy.he.keyholder"):
        getattr(he, name)
    assert callable(getattr(keyholder, name))


def test_public_context_cannot_export_a_secret(secret_ctx, public_ctx):
    assert not hasattr(public_ctx, "secret_bytes")
    assert isinstance(secret_ctx, he.HEContext) and secret_ctx.has_secret_key
    reopened = keyholder.load_secret_context(secret_ctx.secret_bytes(), he.DEFAULT_PRESET)
    assert reopened.secret_bytes() == secret_ctx.secret_bytes()
    assert type(public_ctx) is he.HEContext
