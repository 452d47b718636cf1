"""The package maps generators/, replay/ and analysis/ into mrw.*; every sub-package must be
listed in pyproject.toml or a wheel install silently lacks it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import jsonschema

from mrw import validate

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapping = {v: k for k, v in cfg["package-dir"].items()}
    found = set()
    for top, name in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"add to pyproject.toml packages: {sorted(found - listed)}"


def test_shipped_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(validate.schema())
