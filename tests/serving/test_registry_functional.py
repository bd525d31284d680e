"""``--model DIR#name@alias``: resolve the alias, and swap versions live when it moves."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from serving.exceptions import ModelLoadError
from serving.registry import parse_spec, resolve
from serving.settings import ServeSettings
from shadowtee.config import ConfigError, load_settings
from tests.serving.helpers import DIGITS, serving_client, settings

GOLDEN = [json.loads(line) for line in (DIGITS / "golden.jsonl").read_text().splitlines()]
SHA = {v: json.loads((DIGITS / v / "metadata.json").read_text())["sha256"] for v in "12"}


def _registry(tmp_path: Path, production: str = "1") -> Path:
    root = tmp_path / "registry"
    for v in ("1", "2"):
        shutil.copytree(DIGITS / v, root / "digits" / v)
    _point(root, production)
    return root


def _point(root: Path, production: str) -> None:
    """Move the alias the way a careful tool does: write aside, then rename over."""
    tmp = root / "digits" / "aliases.json.tmp"
    tmp.write_text(json.dumps({"production": production, "candidate": "2"}))
    os.replace(tmp, root / "digits" / "aliases.json")


def test_spec_is_parsed_and_resolved(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    ref = parse_spec(f"{root}#digits@production")
    assert ref is not None and (ref.name, ref.alias) == ("digits", "production")
    assert resolve(ref) == ("1", root / "digits" / "1" / "model.onnx")
    assert parse_spec(str(DIGITS / "1" / "model.onnx")) is None


def test_unknown_alias_and_missing_version_are_named(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    ref = parse_spec(f"{root}#digits@staging")
    assert ref is not None
    with pytest.raises(ModelLoadError, match="alias 'staging' not in"):
        resolve(ref)
    _point(root, "7")
    ref = parse_spec(f"{root}#digits@production")
    assert ref is not None
    with pytest.raises(ModelLoadError, match="names version 7"):
        resolve(ref)


def test_settings_need_a_name_for_a_file_but_not_for_a_registry(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    with pytest.raises(ConfigError, match="--name is required"):
        load_settings(ServeSettings, section="serve",
                      overrides={"model": str(DIGITS / "1" / "model.onnx")})  # fmt: skip
    s = load_settings(
        ServeSettings, section="serve", overrides={"model": f"{root}#digits@production"}
    )
    assert s.model_name == "digits"
    with pytest.raises(ConfigError, match="no registry file"):
        load_settings(ServeSettings, section="serve", overrides={"model": f"{tmp_path}#x@prod"})


async def test_alias_flip_swaps_versions_without_a_failed_request(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    s = settings(model=f"{root}#digits@production", name=None, version=None,
                 registry_poll_ms=20, max_delay_ms=1)  # fmt: skip
    seen: list[tuple[int, str, str]] = []
    async with serving_client(s) as client:

        async def one(i: int) -> str:
            resp = await client.post("/v2/models/digits/infer", json=GOLDEN[i % 100])
            doc: dict[str, Any] = await resp.json()
            seen.append(
                (resp.status, resp.headers["X-Model-Version"], resp.headers["X-Model-Sha256"])
            )
            assert doc["model_version"] == resp.headers["X-Model-Version"]
            return resp.headers["X-Model-Version"]

        assert await one(0) == "1"
        _point(root, "2")
        flipped = False
        for i in range(2000):  # bounded: the swap needs a poll, a load and a warm-up
            versions = await asyncio.gather(*(one(i * 4 + k) for k in range(4)))
            if versions[-1] == "2":
                flipped = True
                break
        assert flipped, "the server never swapped to version 2"
        assert await one(0) == "2"  # and it stays there
        meta = await (await client.get("/v2/models/digits")).json()
        old = await client.get("/v2/models/digits/versions/1")
    assert [st for st, _, _ in seen if st != 200] == []
    assert {(v, sha) for _, v, sha in seen} <= {("1", SHA["1"]), ("2", SHA["2"])}
    assert meta["versions"] == ["2"] and meta["parameters"]["sha256"] == SHA["2"]
    assert old.status == 404
