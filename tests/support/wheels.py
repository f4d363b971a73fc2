"""An offline wheelhouse of cfallow and its dependencies (no package index in tests)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from support import need

ROOT = Path(__file__).resolve().parents[2]

DEPENDENCIES = (
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
    "netaddr",
    "tenacity",
)
_NOT_PACKED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def repack(name: str, house: Path) -> None:
    """The installed distribution ``name`` as a wheel again, file for file."""
    dist = metadata.distribution(name)
    tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    tag = "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))
    norm = dist.metadata["Name"].replace("-", "_")
    info_dir = f"{norm}-{dist.version}.dist-info"
    record: list[str] = []
    with zipfile.ZipFile(house / f"{norm}-{dist.version}-{tag}.whl", "w") as zf:
        for f in dist.files or []:
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel:
                continue  # scripts (pip makes them again) and bytecode
            if rel.startswith(info_dir + "/") and f.name in _NOT_PACKED:
                continue
            data = Path(str(f.locate())).read_bytes()
            zf.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{rel},sha256={digest.decode()},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")


def wheelhouse(dest: Path) -> Path:
    """An offline wheelhouse: cfallow built from this checkout (pip wheel), and
    its dependencies as installed in this environment, repacked file for file.

    The role installs from it with ``--no-index --find-links``, the way an
    air-gapped fleet would; tests never reach a package index.
    """
    src, house = dest / "src", dest / "wheels"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("cfallow", "backends"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip, "--no-index", str(src), "-w", str(house)],
        capture_output=True,
        text=True,
        check=False,
    )
    need(proc.returncode == 0, f"an offline cfallow wheel build (pip wheel): {proc.stderr}")
    return dependencies(house)


def dependencies(house: Path) -> Path:
    """cfallow's dependencies, repacked into ``house`` from this environment."""
    house.mkdir(parents=True, exist_ok=True)
    for name in DEPENDENCIES:
        repack(name, house)
    return house
