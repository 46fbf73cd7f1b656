"""The image's input hash and the host mirror detection (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import image
from labctl.backend import ImageInfo


def test_hash_changes_with_any_input_and_only_then(tmp_path: Path) -> None:
    files = image.context_files()
    names = [f.name for f in files]
    assert names[0] == "Dockerfile"
    assert "services/__main__.py" in names and "services/config.py" in names
    assert not any("__pycache__" in n for n in names)
    h = image.input_hash(files, "sha256:base")
    assert h == image.input_hash(image.context_files(), "sha256:base")  # stable
    assert h != image.input_hash(files, "sha256:other-base")
    changed = [image.ContextFile(f.name, f.data + b"\n# edit") if f.name == "services/config.py" else f
               for f in files]
    assert h != image.input_hash(changed, "sha256:base")


def test_context_tar_is_deterministic() -> None:
    files = image.context_files()
    assert image.context_tar(files) == image.context_tar(files)


def test_mirror_from_deb822_sources_skips_security() -> None:
    text = """Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security

Types: deb
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
"""
    assert image.find_mirror(text) == "http://mirror.example/debian"


def test_mirror_from_one_line_format() -> None:
    text = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main\n"
    assert image.find_mirror(text) == "http://ftp.example/debian"
    assert image.find_mirror("deb cdrom:[Debian]/ bookworm main\n") is None


def test_host_mirror_reads_this_machine(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text("Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm\n")
    assert image.host_debian_mirror((d, tmp_path / "sources.list")) == "http://deb.example/debian"


def _stored(tag: str, image_id: str = "", **labels: str) -> ImageInfo:
    return ImageInfo(image_id or f"sha256:{tag}", (tag,), labels)


def test_prune_decides_by_label_never_by_name() -> None:
    on = image.LABEL_LAB_IMAGE
    images = [
        _stored("maillab:new", **{image.LABEL: "lab", on: "new"}),  # the current lab image
        _stored("maillab-reference:x", **{image.LABEL: "reference", on: "new"}),  # built on it
        _stored("anything:nmap", **{image.LABEL: "lab", on: "new"}),  # a test's image FROM it: inherited labels
        _stored("maillab:old", **{image.LABEL: "lab", on: "old"}),
        _stored("maillab-reference:y", **{image.LABEL: "reference", on: "old"}),
        _stored("whatever:on-old", **{image.LABEL: "lab", on: "old"}),  # a name prune never heard of
        _stored("maillab:used", "sha256:used", **{image.LABEL: "lab", on: "old"}),  # a container's
        _stored("maillab:before-labels", **{image.LABEL: "1"}),  # an older labctl's build: never current
        _stored("maillab/base:bookworm"),  # no label: a base, not ours
        _stored("maillab:lookalike"),  # the lab's name but not its label: not ours either
    ]
    assert image.prunable(images, current="new", in_use={"sha256:used"}) == [
        "maillab-reference:y", "maillab:before-labels", "maillab:old", "whatever:on-old"]
    # No current lab image (its base is gone): every labelled image no container uses.
    assert "maillab:new" in image.prunable(images, current=None, in_use=set())
    # Only what carries a label too: one user's or one test's images, on a shared engine.
    mine = [_stored("a:1", **{image.LABEL: "lab", on: "old", "owner": "me"}),
            _stored("a:2", **{image.LABEL: "lab", on: "old", "owner": "you"})]
    assert image.prunable(mine, current="new", in_use=set(), only={"owner": "me"}) == ["a:1"]


def test_the_hash_covers_the_labels_prune_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    files = image.context_files()
    h = image.input_hash(files, "sha256:base")
    monkeypatch.setattr(image, "LABEL_LAB_IMAGE", "org.maillab.built-on")  # labelled otherwise
    assert image.input_hash(files, "sha256:base") != h
