"""The lab image: tagged by a hash of its inputs, built offline when no registry answers.

``maillab:<hash>`` where the hash covers the Dockerfile, every file of the ``services`` package,
the base image's ID and the names of the labels prune reads, so ``labctl up`` rebuilds exactly when
one of them changed (design decision 3).
When the base (``debian:bookworm-slim``) is neither present nor pullable, a base is bootstrapped
with ``debootstrap --variant=minbase`` from the host's Debian mirror and ``docker import``-ed
(design decision 4): classrooms behind firewalls need that, and so do our build machines.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import services
from labctl.backend import Engine, EngineError, ImageInfo
from labctl.errors import ImageError
from labctl.events import BuildOutput, Notice, Reporter, Stage, ignore

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "compose" / "Dockerfile"
# The reference image (issue 6): FROM the lab image, plus Postfix, Dovecot, NSD, fetchmail, dnsperf.
REFERENCE_DOCKERFILE = REPO_ROOT / "compose" / "reference" / "Dockerfile"
REFERENCE_REPOSITORY = "maillab-reference"
# The cluster node image (issue 16, `labctl cluster create`): Debian's docker.io FROM the lab's base.
NODE_DIR = REPO_ROOT / "compose" / "node"
NODE_REPOSITORY = "maillab-node"
# Not LABEL: prune removes an image with LABEL that belongs to no current lab image, and the node
# image belongs to none; it is kept, as the bases are, so that the next `cluster create` is quick.
LABEL_NODE_IMAGE = "org.maillab.node-image"
SERVICES_DIR = Path(services.__file__).resolve().parent

IMAGE_REPOSITORY = "maillab"
DEFAULT_BASE = "debian:bookworm-slim"
BOOTSTRAP_BASE = "maillab/base:bookworm"
SUITE = "bookworm"
# The labels of the images labctl builds; `labctl image prune` decides by them alone, never by a
# repository name. LABEL says what labctl built ("lab" or "reference"); LABEL_LAB_IMAGE is the
# input hash of the lab image an image is built on (the lab image's own). Docker copies a parent's
# labels to every image built FROM it, so the reference image, and any image someone builds on a
# lab image (a test's, a teacher's), say which lab image they belong to.
LABEL = "org.maillab.image"
LABEL_LAB_IMAGE = "org.maillab.lab-image"

APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def prunable(images: Iterable[ImageInfo], *, current: str | None, in_use: Collection[str],
             only: Mapping[str, str] | None = None) -> list[str]:
    """The tags prune removes: those of the images labctl built, or that were built on one of its
    images, that belong to another lab image than ``current`` (an input hash; None: none is current)
    and that no container was created from.

    An image with :data:`LABEL` but no :data:`LABEL_LAB_IMAGE` was built by a labctl from before
    that label: never current. Images without either (the bases, anyone else's) are not the lab's.
    ``only``: consider only the images that carry these labels too (what one user or test made).
    """
    removed: list[str] = []
    for image in images:
        labels = image.labels
        if LABEL not in labels and LABEL_LAB_IMAGE not in labels:
            continue
        built_on = labels.get(LABEL_LAB_IMAGE)
        if (built_on is not None and built_on == current) or image.id in in_use:
            continue
        if any(labels.get(key) != value for key, value in (only or {}).items()):
            continue
        removed += image.tags
    return sorted(removed)


@dataclass(frozen=True)
class ContextFile:
    name: str  # path inside the build context
    data: bytes


def context_files(dockerfile: Path = DOCKERFILE, services_dir: Path = SERVICES_DIR) -> list[ContextFile]:
    """What goes into the build context, in a stable order (so the hash is stable)."""
    files = [ContextFile("Dockerfile", dockerfile.read_bytes())]
    for path in sorted(services_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            files.append(ContextFile(f"services/{path.relative_to(services_dir).as_posix()}", path.read_bytes()))
    return files


def input_hash(files: Iterable[ContextFile], base_id: str) -> str:
    # The label names are inputs too: prune reads them, so an image an older labctl labelled
    # otherwise never passes for the current one.
    h = hashlib.sha256(base_id.encode() + b"\0" + f"{LABEL} {LABEL_LAB_IMAGE}".encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.data).digest())
    return h.hexdigest()[:12]


def context_tar(files: Iterable[ContextFile]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            info = tarfile.TarInfo(f.name)
            info.size = len(f.data)
            info.mode = 0o644
            info.mtime = 0  # the hash, not timestamps, decides what is new
            tar.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def host_debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str | None:
    """The first Debian archive URI in the host's apt sources (deb822 or one-line format)."""
    texts: list[str] = []
    for src in sources:
        if src.is_dir():
            texts += [p.read_text(errors="replace") for p in sorted(src.glob("*.sources"))]
            texts += [p.read_text(errors="replace") for p in sorted(src.glob("*.list"))]
        elif src.is_file():
            texts.append(src.read_text(errors="replace"))
    return find_mirror("\n".join(texts))


def find_mirror(text: str) -> str | None:
    candidates: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^URIs:\s*(.+)$", line, re.I)
        if m:
            candidates += m.group(1).split()
            continue
        m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", line)
        if m:
            candidates.append(m.group(1))
    for uri in candidates:
        # The security archive serves only bookworm-security, not a bootstrappable suite.
        if uri.startswith(("http://", "https://")) and "security" not in uri:
            return uri.rstrip("/")
    return None


class ImageBuilder:
    """Finds or makes the base, then builds ``maillab:<hash>`` if it is not there yet."""

    def __init__(self, engine: Engine, report: Reporter = ignore) -> None:
        self.engine = engine
        self.report = report

    def ensure(self, *, base: str | None = None, mirror: str | None = None, rebuild: bool = False) -> str:
        """Return the tag of an up-to-date lab image, building it when needed."""
        return self._ensure_built("the lab image", IMAGE_REPOSITORY, context_files(), self.resolve_base(base, mirror),
                                  "BASE", lambda digest: {LABEL: "lab", LABEL_LAB_IMAGE: digest}, rebuild)

    def ensure_reference(self, *, base: str | None = None, mirror: str | None = None, rebuild: bool = False) -> str:
        """Return the tag of an up-to-date reference image, building it (and the lab image) when needed.

        ``maillab-reference:<hash>``, the hash covering its Dockerfile and the lab image's ID: a
        change to services/ rebuilds both, and the apt layer of each stays cached.
        """
        lab = self.ensure(base=base, mirror=mirror)
        lab_id = self._image_id(lab)
        assert lab_id is not None
        # LABEL_LAB_IMAGE: the lab image's, inherited
        return self._ensure_built("the reference image", REFERENCE_REPOSITORY, _reference_files(), (lab, lab_id),
                                  "LAB_IMAGE", lambda _: {LABEL: "reference"}, rebuild)

    def ensure_node(self, *, base: str | None = None, mirror: str | None = None, rebuild: bool = False) -> str:
        """Return the tag of an up-to-date cluster node image, building it when needed.

        ``maillab-node:<hash>``, the hash covering compose/node/ and the base's ID: FROM the same
        base as the lab image, so it builds wherever the lab image does (no registry).
        """
        return self._ensure_built("the cluster node image", NODE_REPOSITORY, _node_files(),
                                  self.resolve_base(base, mirror), "BASE", lambda digest: {LABEL_NODE_IMAGE: digest},
                                  rebuild)

    def _ensure_built(self, what: str, repository: str, files: list[ContextFile], parent: tuple[str, str],
                      parent_arg: str, labels: Callable[[str], dict[str, str]], rebuild: bool) -> str:
        """``repository:<hash of files and the parent image's id>``, built FROM the parent unless there."""
        parent_ref, parent_id = parent
        digest = input_hash(files, parent_id)
        tag = f"{repository}:{digest}"
        if not rebuild and self._exists(tag):
            return tag
        self.report(Notice(f"building {what} {tag} from {parent_ref}"))
        self._build(tag, files, {parent_arg: parent_ref}, labels(digest))
        return tag

    def images(self, names: Iterable[str], *, base: str | None = None, mirror: str | None = None) -> dict[str, str]:
        """Image name of a topology (labctl.topology.IMAGES) -> an up-to-date tag, for those named."""
        wanted = set(names) | {"lab"}
        tags = {"lab": self.ensure(base=base, mirror=mirror)}
        if "reference" in wanted:
            tags["reference"] = self.ensure_reference(base=base, mirror=mirror)
        return tags

    def current_hash(self) -> str | None:
        """The input hash `ensure` would tag the lab image with, or None when the base is not there."""
        for ref in (DEFAULT_BASE, BOOTSTRAP_BASE):
            base_id = self._image_id(ref)
            if base_id:
                return input_hash(context_files(), base_id)
        return None

    def prune(self, *, dry_run: bool = False, only: Mapping[str, str] | None = None) -> list[str]:
        """Remove the lab's images that are neither current nor used by a container; their tags.

        Every change to services/ builds a new ``maillab:<hash>`` (and a reference image on top of
        it), and nothing removed the old ones: a few hundred MB a day of work. Kept: the current
        lab image and every image built on it (the reference image, a test's), the bases, and any
        image a container (running or not) was created from; decided by label (:func:`prunable`).
        """
        in_use = {c.image_id for c in self.engine.containers()}
        removed = []
        for ref in prunable(self.engine.images(), current=self.current_hash(), in_use=in_use, only=only):
            if not dry_run:
                try:
                    self.engine.remove_image(ref)  # the image goes with its last tag
                except EngineError as exc:  # made a container's meanwhile, or a parent
                    self.report(Notice(f"kept {ref}: {exc}"))
                    continue
            removed.append(ref)
        return removed

    # -- the base ----------------------------------------------------------------------------

    def resolve_base(self, base: str | None, mirror: str | None) -> tuple[str, str]:
        """(reference, image id) of the base: present, pulled, or bootstrapped, in that order."""
        wanted = base or DEFAULT_BASE
        for ref in (wanted,) if base else (wanted, BOOTSTRAP_BASE):
            image_id = self._image_id(ref)
            if image_id:
                return ref, image_id
        try:
            self.report(Notice(f"pulling {wanted}"))
            return wanted, self.engine.pull(wanted)
        except EngineError as exc:
            if base:
                raise ImageError(f"base image {base} is not present and cannot be pulled: {exc}") from exc
            self.report(Notice(f"{wanted} cannot be pulled ({exc}); "
                               f"bootstrapping an equivalent base with debootstrap instead"))
        return BOOTSTRAP_BASE, self.bootstrap(mirror)

    def bootstrap(self, mirror: str | None = None) -> str:
        """debootstrap a minimal Debian into a temporary folder and `docker import` it."""
        mirror = mirror or host_debian_mirror()
        missing = self._bootstrap_blockers(mirror)
        if missing:
            raise ImageError(
                f"{DEFAULT_BASE} is not present and no registry answers, and this host cannot "
                "bootstrap a base:\n  - " + "\n  - ".join(missing) + "\nEither fix the above, "
                f"`docker load` a {DEFAULT_BASE} image saved elsewhere, or pass --base IMAGE."
            )
        assert mirror is not None
        self.report(Notice(f"bootstrapping a Debian {SUITE} base from {mirror} (about 30 s)"))
        with tempfile.TemporaryDirectory(prefix="maillab-base-") as tmp:
            root = Path(tmp) / "rootfs"
            self._run(["debootstrap", "--variant=minbase", SUITE, str(root), mirror])
            self._finish_rootfs(root, mirror)
            tarball = Path(tmp) / "rootfs.tar"
            self._run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."])
            self.report(Notice(f"importing the base as {BOOTSTRAP_BASE}"))
            repo, _, tag = BOOTSTRAP_BASE.partition(":")
            self.engine.import_image(
                str(tarball), repo, tag,
                ['CMD ["/bin/bash"]', "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            )
        image_id = self._image_id(BOOTSTRAP_BASE)
        if not image_id:
            raise ImageError(f"docker import did not produce {BOOTSTRAP_BASE}")
        return image_id

    @staticmethod
    def _bootstrap_blockers(mirror: str | None) -> list[str]:
        missing = []
        if shutil.which("debootstrap") is None:
            missing.append("debootstrap is not installed (Debian/Ubuntu: apt-get install debootstrap)")
        if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
            missing.append("the Debian archive keyring is missing (apt-get install debian-archive-keyring)")
        if os.geteuid() != 0:
            missing.append("debootstrap must run as root (run `labctl image build` with sudo once)")
        if mirror is None:
            missing.append("no Debian mirror found in /etc/apt/sources.list*; pass --mirror URL")
        return missing

    @staticmethod
    def _finish_rootfs(root: Path, mirror: str) -> None:
        """Make the bootstrapped tree match what the slim image offers: apt sources, no caches."""
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / cache).glob("*"):
                if p.is_file():
                    p.unlink()

    def _run(self, argv: list[str]) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            self.report(BuildOutput(line.rstrip()))
            tail = (tail + [line.rstrip()])[-15:]
        if proc.wait() != 0:
            raise ImageError(f"{argv[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))

    # -- the lab image -----------------------------------------------------------------------

    def _build(self, tag: str, files: list[ContextFile], buildargs: dict[str, str], labels: dict[str, str]) -> None:
        stream = self.engine.build(context_tar(files), tag, buildargs, labels)
        tail: list[str] = []
        for chunk in stream:
            text = _chunk_text(chunk)
            if "error" in chunk:
                detail = "\n".join(tail[-10:])
                raise ImageError(f"building {tag} failed: {chunk['error'].strip()}\n{detail}")
            if text:
                self.report(BuildOutput(text))
                tail = (tail + [text])[-20:]
        if not self._exists(tag):
            raise ImageError(f"the build finished but {tag} is missing; output:\n" + "\n".join(tail))
        self.engine.tag(tag, tag.partition(":")[0], "latest")

    def _image_id(self, ref: str) -> str | None:
        return self.engine.image_id(ref)

    def _exists(self, ref: str) -> bool:
        return self._image_id(ref) is not None


def _reference_files() -> list[ContextFile]:
    return [ContextFile("Dockerfile", REFERENCE_DOCKERFILE.read_bytes())]


def _node_files() -> list[ContextFile]:
    return [ContextFile(path.name, path.read_bytes()) for path in sorted(NODE_DIR.iterdir()) if path.is_file()]


def _chunk_text(chunk: dict[str, Any]) -> str:
    return str(chunk.get("stream") or chunk.get("status") or "").rstrip()



def push(source: Engine, target: Engine, ref: str, report: Reporter = ignore) -> bool:
    """Copy image ``ref`` from ``source`` to ``target`` over their Engine APIs (`docker save |
    docker load`, streamed): no registry anywhere. False when ``target`` already had it."""
    image_id = source.image_id(ref)
    if image_id is None:
        raise ImageError(f"{ref} is not on {source.where}; build it there with `labctl image build`")
    if target.image_id(ref) == image_id:
        return False
    started = time.monotonic()
    target.load_image(source.save_image(ref))
    if target.image_id(ref) != image_id:
        raise ImageError(f"loading {ref} into {target.where} left another image under that name; "
                         f"remove it there (`docker -H {target.where} rmi {ref}`) and push again")
    report(Stage("image", f"{ref} copied to {target.where} ({time.monotonic() - started:.1f} s)"))
    return True
