"""The Dockerfile's header says what the image holds; the COPY lines and .dockerignore agree."""

from __future__ import annotations

import fnmatch
import re

from .helpers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _copied() -> set[str]:
    """Folders the image gets from the build context (``COPY src ./dest``, not files)."""
    sources = [w for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for w in line.split()[:-1]]
    return {s for s in sources if (ROOT / s).is_dir()}


def test_the_header_lists_exactly_the_folders_the_image_copies() -> None:
    header = DOCKERFILE.split("\nFROM ")[0]
    listed = set(re.findall(r"^#\s+(\w+)/\s", header, re.M))
    assert listed == _copied(), "the header comment and the COPY lines disagree"
    assert {"wkr_celery", "workers", "examples"} <= listed


def test_nothing_the_image_copies_is_excluded_by_dockerignore() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for folder in _copied():
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")]
        assert files, folder
        for path in files:
            hit = [p for p in patterns if fnmatch.fnmatch(path, p) or path.startswith(p + "/")]
            assert not hit, f"{path} is copied by the Dockerfile but excluded by {hit}"
