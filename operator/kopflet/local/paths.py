"""Where the project's own files (CRDs, manifests) are found at run time."""

from __future__ import annotations

import os
from pathlib import Path


def project_dir() -> Path:
    """The checkout holding ``crds/`` and ``manifests/``: ``$KOPFLET_PROJECT_DIR``, else the
    directory above the ``operator/`` source root this package was loaded from."""
    override = os.environ.get("KOPFLET_PROJECT_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3]
