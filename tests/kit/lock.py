"""requirements.lock as data: what the image installs (`uv pip compile --generate-hashes` output)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass
class Locked:
    """One pinned package: its version, the hashes pip checks, and what the lock says needs it."""

    version: Version
    hashes: list[str]
    via: list[str]


def header() -> str:
    """The comment block on top: the command that produced the file."""
    return "".join(line for line in LOCK.read_text().splitlines(True) if line.startswith("#   "))


def locked() -> dict[NormalizedName, Locked]:
    """Every package the lock pins, by canonical name."""
    found: dict[NormalizedName, Locked] = {}
    current: Locked | None = None
    for line in LOCK.read_text().splitlines():
        pin = _PIN.match(line)
        if pin:
            current = Locked(Version(pin.group(2)), [], [])
            found[canonicalize_name(pin.group(1))] = current
            continue
        if current is None:
            continue
        current.hashes.extend(_HASH.findall(line))
        comment = line.strip().removeprefix("#").strip()
        if line.lstrip().startswith("#") and comment not in ("via", ""):
            current.via.append(comment.removeprefix("via ").strip())
    return found
