"""Render crds/*.yaml from kopflet.api.schema (run after changing the schema).

    PYTHONPATH=operator python crds/generate.py

The CRDs are data written in Python so that the Instance spec, probes and the
other shared shapes are defined once; a unit test fails when a YAML file here is
not what this script would write.
"""

from __future__ import annotations

from pathlib import Path

from kopflet.api.schema import crd_manifests, render_crd_yaml


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, crd in crd_manifests().items():
        (here / name).write_text(render_crd_yaml(crd), encoding="utf-8")
        print(f"wrote crds/{name}")


if __name__ == "__main__":
    main()
