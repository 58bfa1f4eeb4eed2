"""Reading an exported bundle: a folder of model files described by ``manifest.json``.

A bundle (``dist/android/`` and its Core ML / ONNX siblings) holds the model files of one target
(``model.pte``, ``model.mlpackage/...``, ``*.onnx``), ``tokenizer.json``, ``parity.json`` and
``manifest.json``. The manifest says::

    {
      "schema_version": 1,
      "target": "executorch",            # which backend runs the model files
      "runtime": {...},                  # ModelSpec.to_dict(): what the runtime needs besides weights
      ...                                # exporter's extras (quantization, toolchain versions, ...)
      "files": {"model.pte": {"sha256": "...", "bytes": 123}, ...}
    }

``files`` lists every file of the bundle except ``manifest.json`` itself, by its path relative to
the bundle root with ``/`` separators (a directory such as ``model.mlpackage`` is listed file by
file). Files the manifest does not list are ignored. Only numpy/stdlib here: the demo apps mirror it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import BundleError
from .spec import ModelSpec

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
PARITY_NAME = "parity.json"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (model files can be many GB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_member_name(name: str) -> str:
    """A bundle member is a relative POSIX path that stays inside the bundle; returns it unchanged."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"{name!r} is not a plain relative path inside the bundle")
    return name


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    spec: ModelSpec
    target: str

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.manifest["files"]

    def has(self, name: str) -> bool:
        """True if the manifest lists ``name``, or files under it when it is a directory."""
        return name in self.files or any(f.startswith(name.rstrip("/") + "/") for f in self.files)

    def path(self, name: str) -> Path:
        """Path of a member the manifest lists (a file, or a directory of listed files)."""
        if not self.has(name):
            raise BundleError(f"{self.root}: the bundle has no {name} (not in {MANIFEST_NAME})")
        return self.root / name

    @property
    def tokenizer_path(self) -> Path | None:
        return self.root / TOKENIZER_NAME if TOKENIZER_NAME in self.files else None


def open_bundle(root: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle. Every problem is one BundleError line naming the file.

    Checks existence and size of every listed file first (cheap), then their sha256 unless
    ``verify_hashes`` is False (hashing a multi-GB model takes seconds).
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory" if not root.exists() else f"{root}: not a directory")
    manifest = _read_manifest(root / MANIFEST_NAME)
    where = root / MANIFEST_NAME

    target = manifest.get("target")
    if not isinstance(target, str) or not target:
        raise BundleError(f"{where}: no 'target' (which runtime runs this bundle)")
    runtime = manifest.get("runtime")
    if not isinstance(runtime, dict):
        raise BundleError(f"{where}: no 'runtime' section (the model spec)")
    try:
        spec = ModelSpec.from_dict(runtime)
    except KeyError as e:
        raise BundleError(f"{where}: runtime section lacks {e}") from None
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: runtime section is invalid: {e}") from None

    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{where}: no 'files' table")
    entries: list[tuple[str, Path, str, int]] = []
    for name in sorted(files):
        entry = files[name]
        try:
            check_member_name(name)
            digest, size = str(entry["sha256"]).lower(), int(entry["bytes"])
        except (ValueError, KeyError, TypeError) as e:
            raise BundleError(f"{where}: bad files entry {name!r}: {e}") from None
        entries.append((name, root / name, digest, size))

    for _, path, _, size in entries:
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {MANIFEST_NAME})")
        actual = path.stat().st_size
        if actual != size:
            what = "truncated" if actual < size else "larger than exported"
            raise BundleError(
                f"{path}: {actual} bytes but {MANIFEST_NAME} says {size} ({what}; the bundle was modified after export)"
            )
    if verify_hashes:
        for _, path, digest, _ in entries:
            actual = sha256_file(path)
            if actual != digest:
                raise BundleError(
                    f"{path}: sha256 mismatch ({MANIFEST_NAME} says {digest[:12]}…, file is {actual[:12]}…); "
                    "the bundle was modified after export"
                )
    return Bundle(root=root, manifest=manifest, spec=spec, target=target)


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path}: missing; not an autoglm-export bundle, or its export did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"{path}: no valid schema_version; not an autoglm-export manifest")
    if version > MANIFEST_SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version} is newer than this runtime reads ({MANIFEST_SCHEMA_VERSION}); "
            "upgrade autoglm-export"
        )
    return manifest
