"""Format versioning: old/unknown and future versions are refused naming both versions;
a migration step is one function."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from sharing_data import text_trace, tok_dir, tokenizer  # noqa: F401

from mrw import validate as v
from mrw.cli import cli
from mrw.errors import TraceError
from mrw.trace import FORMAT_VERSION, load


def _file(tmp_path, text_trace, version):
    d = text_trace.to_dict()
    d["header"]["version"] = version
    p = tmp_path / f"v{version}.json"
    p.write_bytes(orjson.dumps(d))
    return p


@pytest.mark.parametrize("version,words", [(0, "unknown"), (FORMAT_VERSION + 1, "newer"), (99, "newer")])
def test_unreadable_versions_refused_naming_both(tmp_path, text_trace, version, words):
    p = _file(tmp_path, text_trace, version)
    with pytest.raises(TraceError) as e:
        load(p)
    msg = str(e.value)
    assert f"version {version}" in msg and f"version {FORMAT_VERSION}" in msg and words in msg
    r = CliRunner().invoke(cli, ["validate", str(p)])
    assert r.exit_code == 1 and f"version {version}" in r.output


def test_a_migration_step_is_one_function(tmp_path, text_trace, monkeypatch):
    """A pretend version 0 whose calls named their tokens 'prompt_tokens': one step upgrades it."""

    def v0_to_v1(doc):
        for w in doc["workflows"]:
            for c in w["calls"]:
                c["input_tokens"] = c.pop("prompt_tokens")
        doc["header"]["version"] = 1
        return doc

    d = text_trace.to_dict()
    d["header"]["version"] = 0
    for w in d["workflows"]:
        for c in w["calls"]:
            c["prompt_tokens"] = c.pop("input_tokens")
    p = tmp_path / "old.json"
    p.write_bytes(orjson.dumps(d))
    monkeypatch.setitem(v.MIGRATIONS, 0, v0_to_v1)
    t = load(p)
    assert [c.input_tokens for _, c in t.calls()] == [c.input_tokens for _, c in text_trace.calls()]
    monkeypatch.setitem(v.MIGRATIONS, 0, lambda doc: doc)  # a broken step is caught, not looped on
    with pytest.raises(TraceError, match="produced version 0, expected 1"):
        load(p)
