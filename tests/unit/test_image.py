"""The image's input hash and the host mirror detection (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

from labctl import image


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
