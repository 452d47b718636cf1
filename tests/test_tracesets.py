"""Trace sets: pack/unpack/verify round trip, hostile archives, tampering."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sharing_data import text_trace, tok_dir, tokenizer, trace_file  # noqa: F401

from mrw.cli import cli
from mrw.trace import dump, load
from mrw.tracesets import MANIFEST_NAME, Limits, TraceSetError, pack, read_manifest, unpack, verify


@pytest.fixture()
def set_dir(tmp_path, text_trace, tokenizer):
    from mrw.anonymize import anonymize

    d = tmp_path / "myset"
    dump(text_trace, d / "composite.json")
    dump(anonymize(text_trace, tokenizer)[0], d / "anon" / "composite.anon.json.gz")
    (d / "README.md").write_text("Traces of the composite workload.\n")
    return d


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_pack_unpack_verify_round_trip(tmp_path, set_dir):
    arc = tmp_path / "set.tar.gz"
    r = run("pack", set_dir, "-o", arc, "--licence", "CC-BY-4.0", "--provenance", "vLLM 0.11 on one H100, 2025")
    assert r.exit_code == 0, r.output
    man = read_manifest(set_dir)
    assert man.licence == "CC-BY-4.0" and "H100" in man.provenance
    assert man.workloads == ["composite"] and man.format_versions == [1]
    by = {f.path: f for f in man.files}
    assert set(by) == {"composite.json", "anon/composite.anon.json.gz", "README.md"}
    assert by["composite.json"].model == "/tmp/models/tiny-bpe" and by["composite.json"].calls == 12
    assert by["anon/composite.anon.json.gz"].anonymized and not by["composite.json"].anonymized
    out = tmp_path / "got"
    r = run("unpack", arc, "-o", out)
    assert r.exit_code == 0, r.output
    assert "composite.json: ok (3 workflows, 12 calls)" in r.output
    assert load(out / "composite.json").to_dict() == load(set_dir / "composite.json").to_dict()
    assert (out / "anon" / "composite.anon.json.gz").read_bytes() == (set_dir / "anon" / "composite.anon.json.gz").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".mrw-unpack")]
    assert run("verify", arc).exit_code == 0
    assert run("verify", out).exit_code == 0


def test_pack_refuses_invalid_trace(tmp_path, set_dir):
    doc = orjson.loads((set_dir / "composite.json").read_bytes())
    doc["workflows"][0]["calls"][1]["deps"] = ["nope"]
    (set_dir / "bad.json").write_bytes(orjson.dumps(doc))
    with pytest.raises(Exception, match="bad.json.*nope"):
        pack(set_dir, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_tampered_file_fails_verify_naming_it(tmp_path, set_dir):
    arc = tmp_path / "set.tar.gz"
    pack(set_dir, arc)
    out = tmp_path / "got"
    unpack(arc, out)
    p = out / "composite.json"
    raw = p.read_bytes()
    tampered = re.sub(rb'"output_tokens": (\d+)', lambda m: b'"output_tokens": ' + str(int(m[1]) + 1).encode(), raw, count=1)
    assert tampered != raw
    p.write_bytes(tampered)
    r = run("verify", out)
    assert r.exit_code == 1
    assert "composite.json: FAILED: checksum mismatch" in r.output
    assert "composite.anon.json.gz: ok" in r.output  # the others are still reported, and fine
    # the same tampering inside an archive whose manifest was not updated
    members = _members(arc)
    members["composite.json"] = p.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    _write_tar(bad, [(n, d) for n, d in members.items()])
    r = run("verify", bad)
    assert r.exit_code == 1 and "composite.json: FAILED: checksum mismatch" in r.output
    with pytest.raises(TraceSetError, match="composite.json: SHA-256"):
        unpack(bad, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()


def test_verify_reports_schema_and_semantic_problems_per_file(tmp_path, set_dir):
    pack(set_dir, tmp_path / "a.tar.gz")
    doc = orjson.loads((set_dir / "composite.json").read_bytes())
    doc["workflows"][0]["calls"][0]["input_tokens"] = -3
    (set_dir / "composite.json").write_bytes(orjson.dumps(doc))
    r = run("verify", set_dir)
    assert r.exit_code == 1
    assert "composite.json: FAILED: $.workflows[0].calls[0].input_tokens" in r.output
    (set_dir / "extra.json").write_bytes(b"{}")
    assert "extra.json: FAILED: not listed" in run("verify", set_dir).output


# ---------------------------------------------------------------------------- hostile archives


def _members(arc: Path) -> dict[str, bytes]:
    with tarfile.open(arc) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}


def _write_tar(path: Path, members, *, specials=()):
    """members: (name, bytes); specials: TarInfo objects appended after them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for ti, data in specials:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buf.getvalue()))


def _manifest(files: dict[str, bytes]) -> bytes:
    import hashlib

    return orjson.dumps({"format": "mrw-traceset", "version": 1, "files": [
        {"path": n, "sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d), "kind": "doc"} for n, d in files.items()]})


def _special(name, kind, linkname="", size=0):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = linkname
    ti.size = size
    return ti


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE = {
    "traversal": ([("../evil.txt", b"x")], [], "path traversal"),
    "deep traversal": ([("a/../../evil.txt", b"x")], [], "path traversal"),
    "absolute": ([("/tmp/mrw-evil-abs.txt", b"x")], [], "absolute path"),
    "symlink": ([], [(_special("link", tarfile.SYMTYPE, "/etc"), None)], "symbolic link"),
    "symlink then write through it": ([], [(_special("d", tarfile.SYMTYPE, ".."), None),
                                           (_special("d/evil.txt", tarfile.REGTYPE, size=1), b"x")], "symbolic link"),
    "hardlink": ([], [(_special("hl", tarfile.LNKTYPE, "/etc/passwd"), None)], "hard link"),
    "char device": ([], [(_special("dev", tarfile.CHRTYPE), None)], "character device"),
    "block device": ([], [(_special("blk", tarfile.BLKTYPE), None)], "block device"),
    "fifo": ([], [(_special("fifo", tarfile.FIFOTYPE), None)], "fifo"),
    "unlisted": ([("surprise.sh", b"#!/bin/sh\nrm -rf ~\n")], [], "not listed"),
    "backslash": ([("..\\evil.txt", b"x")], [], "backslash"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused_nothing_written_outside(tmp_path, case):
    regular, specials, why = HOSTILE[case]
    listed = {n: d for n, d in regular if case != "unlisted"}
    arc = tmp_path / "in" / "evil.tar.gz"
    arc.parent.mkdir()
    _write_tar(arc, [(MANIFEST_NAME, _manifest(listed)), *regular], specials=specials)
    box = tmp_path / "box"
    box.mkdir()
    before = _snapshot(tmp_path)
    target = box / "target"
    with pytest.raises(TraceSetError, match=why):
        unpack(arc, target)
    assert _snapshot(tmp_path) == before  # the target it created is gone too, nothing else appeared
    assert not Path("/tmp/mrw-evil-abs.txt").exists()
    r = run("verify", arc)
    assert r.exit_code == 1 and why in r.output
    assert _snapshot(tmp_path) == before


def test_oversized_member_refused(tmp_path):
    data = b"y" * 5000
    arc = tmp_path / "big.tar.gz"
    _write_tar(arc, [(MANIFEST_NAME, _manifest({"README.md": data})), ("README.md", data)])
    with pytest.raises(TraceSetError, match="over the 4,096-byte bound"):
        unpack(arc, tmp_path / "t", limits=Limits(max_member_bytes=4096))
    assert not (tmp_path / "t").exists()
    unpack(arc, tmp_path / "ok")  # fine under the default bounds
    assert (tmp_path / "ok" / "README.md").read_bytes() == data


def test_gzip_bomb_stops_at_the_bound(tmp_path):
    zeros = 64 * 1024 * 1024  # 64 MiB of zeros compresses to ~64 KiB
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        m = _manifest({"README.md": bytes(zeros)})  # listed, with the right checksum: only the size is wrong
        ti = tarfile.TarInfo(MANIFEST_NAME)
        ti.size = len(m)
        tf.addfile(ti, io.BytesIO(m))
        ti = tarfile.TarInfo("README.md")
        ti.size = zeros
        tf.addfile(ti, io.BytesIO(bytes(zeros)))
    arc = tmp_path / "bomb.tar.gz"
    arc.write_bytes(gzip.compress(raw.getvalue(), 9))
    assert arc.stat().st_size < zeros // 200
    with pytest.raises(TraceSetError, match="decompresses to more than"):
        unpack(arc, tmp_path / "t", limits=Limits(max_total_bytes=8 * 1024 * 1024, max_member_bytes=1 << 40))
    assert not (tmp_path / "t").exists()


def test_nested_gzip_bomb_in_a_trace_is_bounded(tmp_path):
    bomb = gzip.compress(b"{" + b" " * (32 * 1024 * 1024), 9)
    d = tmp_path / "s"
    d.mkdir()
    (d / "t.json.gz").write_bytes(bomb)
    import hashlib

    (d / MANIFEST_NAME).write_bytes(orjson.dumps({"format": "mrw-traceset", "version": 1, "files": [
        {"path": "t.json.gz", "sha256": hashlib.sha256(bomb).hexdigest(), "bytes": len(bomb)}]}))
    rep = verify(d, limits=Limits(max_member_bytes=1024 * 1024))
    assert not rep.ok and "decompresses to more than" in rep.files[0].problems[0]


def test_too_many_members_and_manifest_first(tmp_path):
    files = {f"f{i}.txt": b"x" for i in range(20)}
    arc = tmp_path / "many.tar.gz"
    _write_tar(arc, [(MANIFEST_NAME, _manifest(files)), *files.items()])
    with pytest.raises(TraceSetError, match="more than 10 members"):
        unpack(arc, tmp_path / "t", limits=Limits(max_members=10))
    arc2 = tmp_path / "order.tar.gz"
    _write_tar(arc2, [("f0.txt", b"x"), (MANIFEST_NAME, _manifest({"f0.txt": b"x"}))])
    with pytest.raises(TraceSetError, match="first member"):
        unpack(arc2, tmp_path / "t2")


def test_unpack_refuses_non_empty_target(tmp_path, set_dir):
    arc = tmp_path / "s.tar.gz"
    pack(set_dir, arc)
    t = tmp_path / "t"
    t.mkdir()
    (t / "mine.txt").write_text("keep me")
    with pytest.raises(TraceSetError, match="not empty"):
        unpack(arc, t)
    assert os.listdir(t) == ["mine.txt"]
