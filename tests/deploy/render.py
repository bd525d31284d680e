"""A small, offline renderer for ``deploy/``: enough of kustomize to check what we ship.

It loads a kustomization's resources (recursively through bases), applies its strategic-merge
patches (maps merge, ``null`` deletes a key, lists of named items merge by ``name``), and returns the
Kubernetes objects. Generated ConfigMaps are returned as names only: their content is our files.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]


def load_docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        by_name = {i["name"]: i for i in base}
        merged = [_merge(by_name[i["name"]], i) if i["name"] in by_name else i for i in patch]
        patched = {i["name"] for i in patch}
        return [i for i in base if i["name"] not in patched] + merged
    return copy.deepcopy(patch)


def render(kustomization_dir: Path) -> tuple[list[Obj], set[str]]:
    """Objects of a kustomization and the names of the ConfigMaps it generates."""
    kust = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    objects: list[Obj] = []
    generated: set[str] = set()
    for res in kust.get("resources", []):
        p = (kustomization_dir / res).resolve()
        if p.is_dir():
            objs, gen = render(p)
            objects += objs
            generated |= gen
        else:
            objects += load_docs(p)
    for gen in kust.get("configMapGenerator", []):
        generated.add(gen["name"])
        for f in gen.get("files", []):
            if not (kustomization_dir / f).is_file():
                raise FileNotFoundError(f"{kustomization_dir}: configMapGenerator file {f} missing")
    for patch in kust.get("patches", []):
        for p in load_docs(kustomization_dir / patch["path"]):
            matches = [
                o
                for o in objects
                if o["kind"] == p["kind"] and o["metadata"]["name"] == p["metadata"]["name"]
            ]
            if len(matches) != 1:
                raise LookupError(
                    f"patch {patch['path']} targets no single {p['kind']} {p['metadata']['name']}"
                )
            objects[objects.index(matches[0])] = _merge(matches[0], p)
    ns = kust.get("namespace")
    if ns:
        for o in objects:
            if o["kind"] != "Namespace":
                o.setdefault("metadata", {})["namespace"] = ns
    return objects, generated
