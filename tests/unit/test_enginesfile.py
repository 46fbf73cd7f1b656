"""The engines file: what it says, and every mistake in it named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl import enginesfile
from labctl.errors import LabctlError, SourceError

GOOD = """\
engines:
  node1: {url: "tcp://10.88.0.2:2375", capacity: 30}
  room-b: ssh://teacher@room-b.example
  secure:
    url: tcp://lab.example:2376
    tls: {ca: certs/ca.pem, cert: certs/cert.pem, key: certs/key.pem}
swarm: {manager: node1}
cluster: maillab-node
"""


def test_a_good_file_and_its_defaults(tmp_path: Path) -> None:
    engines = enginesfile.parse(tmp_path / "engines.yml", GOOD)
    assert engines.names() == ["node1", "room-b", "secure"]
    assert engines.get("node1").capacity == 30
    assert engines.get("room-b").capacity == enginesfile.DEFAULT_CAPACITY
    tls = engines.get("secure").tls
    assert tls is not None and tls.ca == tmp_path / "certs" / "ca.pem"  # relative to the file
    assert (engines.manager, engines.cluster) == ("node1", "maillab-node")


def test_written_and_read_back_the_same(tmp_path: Path) -> None:
    engines = enginesfile.parse(tmp_path / "engines.yml", GOOD)
    path = enginesfile.save(engines)
    assert enginesfile.parse(path, path.read_text()) == engines
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(("text", "line", "words"), [
    ("engines:\n  node1: {url: tcp://a:1}\nswram: {manager: node1}\n", 3, "unknown key 'swram'"),
    ("engines:\n  node1: {url: http://a:2375}\n", 2, "must begin with one of unix://, tcp://, ssh://"),
    ("engines:\n  node1: {url: tcp://a:1, capacity: 0}\n", 2, "capacity is how many labs"),
    ("engines:\n  node1: {url: tcp://a:1, capcity: 3}\n", 2, "unknown key 'capcity'"),
    ("engines:\n  Node_1!: {url: tcp://a:1}\n", 2, "not an engine name"),
    ("engines:\n  node1: {url: tcp://a:1}\nswarm: {manager: node2}\n", 3, "swarm manager 'node2' is not one"),
    ("engines:\n  n: {url: 'ssh://u@h', tls: {ca: a, cert: b, key: c}}\n", 2, "tls is for tcp:// engines"),
    ("engines:\n  n: {capacity: 3}\n", 2, "needs url:"),
    ("engines: [a, b]\n", 1, "maps engine names"),
    ("engines:\n  n: {url: 'tcp://a:1'\n", 3, "not valid YAML"),
])
def test_mistakes_name_the_line_and_what_to_write(tmp_path: Path, text: str, line: int, words: str) -> None:
    with pytest.raises(SourceError) as raised:
        enginesfile.parse(tmp_path / "engines.yml", text)
    assert f"engines.yml:{line}:" in str(raised.value) and words in str(raised.value)


def test_where_it_is_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(enginesfile.ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert enginesfile.where() == tmp_path / "cfg" / "maillab" / "engines.yml"
    assert enginesfile.load() is None  # none in the config dir: the one local engine, as before
    monkeypatch.setenv(enginesfile.ENV, str(tmp_path / "env.yml"))
    with pytest.raises(LabctlError, match="does not exist; create it with `labctl engines add"):
        enginesfile.load()  # named, so it must be there
    assert enginesfile.where(str(tmp_path / "given.yml")) == tmp_path / "given.yml"
    empty = enginesfile.load_or_empty()
    assert not empty.existed and empty.entries == ()


def test_adding_replacing_and_removing(tmp_path: Path) -> None:
    engines = enginesfile.parse(tmp_path / "e.yml", GOOD)
    changed = engines.with_engine(enginesfile.EngineEntry("node1", "tcp://10.88.0.9:2375", 5))
    assert changed.get("node1").url == "tcp://10.88.0.9:2375" and len(changed.entries) == 3
    gone = changed.without("node1")
    assert "node1" not in gone.names() and gone.manager is None  # its manager role goes with it
    with pytest.raises(LabctlError, match="no engine 'node9'.*labctl engines list"):
        gone.without("node9")
