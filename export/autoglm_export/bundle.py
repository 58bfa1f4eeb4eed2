"""Writing a bundle atomically: build it in a temp folder next to the destination, then rename.

    check_destination(out_dir, force)          # CLI: fail before any expensive work
    with BundleWriter(out_dir, force=force) as w:
        program.write_to_file(open(w.path("model.pte"), "wb"))
        w.copy("tokenizer.json", source.tokenizer_path)
        w.write_json("parity.json", report.to_json())
        w.finish({"target": "executorch", "runtime": spec.to_dict(), ...})

``finish`` hashes every file in the temp folder into ``manifest["files"]``, writes ``manifest.json``,
checks the result opens with the runtime's reader, and publishes it with renames on the same
filesystem. If the block raises, or ends without ``finish``, the temp folder is deleted and
``out_dir`` is untouched: a crash never leaves a half-written bundle where a runtime would look.
(Atomic against process crashes; files are not fsync'ed, so not against power loss.)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from autoglm_runtime.bundle import MANIFEST_NAME, MANIFEST_SCHEMA_VERSION, check_member_name, open_bundle, sha256_file
from autoglm_runtime.errors import BundleError

from .errors import ExportError

# toolchain_versions() key -> distribution name
_DISTRIBUTIONS = {
    "torch": "torch",
    "executorch": "executorch",
    "torchao": "torchao",
    "transformers": "transformers",
    "coremltools": "coremltools",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "autoglm_export": "autoglm-export",
}


def toolchain_versions() -> dict[str, str | None]:
    """Versions of everything that shapes an export (None: not installed), for the manifest."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    if out["autoglm_export"] is None:  # running from a source tree that was never installed
        from . import __version__

        out["autoglm_export"] = __version__
    return out


def check_destination(out_dir: str | Path, force: bool) -> None:
    """Raise ExportError unless a bundle may be written to out_dir. Cheap: call it before exporting.

    With force, only a previous bundle (a folder with manifest.json) or an empty folder is replaced:
    a typo such as ``--out ~ --force`` must not delete a home directory.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not force:
        raise ExportError(f"{out_dir} exists; pass --force to overwrite")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ExportError(f"{out_dir} exists and is not a directory; refusing to replace it, even with --force")
    if not (out_dir / MANIFEST_NAME).is_file() and any(out_dir.iterdir()):
        raise ExportError(
            f"{out_dir} exists and is not an autoglm-export bundle (no {MANIFEST_NAME}); "
            "refusing to replace it, even with --force"
        )


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dump_json(obj: Any) -> str:
    """The JSON style of every bundle file: indented, UTF-8 (Chinese stays readable), newline-terminated."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def staging_dir(parent: Path, prefix: str) -> Path:
    """A fresh temp folder in ``parent`` with the permissions ``mkdir`` would give it: mkdtemp makes
    it 0700, and renamed into place that would hide a published bundle from the user's group."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~_umask())
    return path


def follow_umask(root: Path) -> None:
    """Give everything under ``root`` the permissions the user's umask asks for, before publishing:
    some writers create private files (safetensors: 0600; mkdtemp folders: 0700)."""
    umask = _umask()
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~umask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~umask)


def _file_entry(path: Path) -> dict[str, Any]:
    """A manifest ``files`` entry: what ``open_bundle`` checks the file against."""
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _replace_file(path: Path, text: str) -> Path:
    """Write ``path`` whole or not at all: a temp file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def record_validation(root: str | Path, report: dict[str, Any]) -> None:
    """Record a passing ``validate`` in a published bundle: its parity.json (listed and hashed in the
    manifest) and ``validated: true``, as an export with the gate on would have written them. Each file
    is replaced atomically, parity.json first; the manifest's replacement is the commit.
    Raises OSError when the bundle cannot be written (a read-only app asset, say)."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    parity = _replace_file(root / "parity.json", dump_json(report))
    files = {**manifest["files"], "parity.json": _file_entry(parity)}
    manifest.update({"validated": True, "files": dict(sorted(files.items()))})
    _replace_file(root / MANIFEST_NAME, dump_json(manifest))


class BundleWriter:
    def __init__(self, out_dir: str | Path, force: bool = False):
        self.out_dir = Path(out_dir)
        self.force = force
        self.tmp_dir: Path | None = None
        self.published = False
        self.manifest: dict[str, Any] | None = None

    # ---- lifecycle
    def __enter__(self) -> BundleWriter:
        check_destination(self.out_dir, self.force)  # before the caller's expensive work
        parent = self.out_dir.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            # Same folder as out_dir, so publishing is a rename, never a cross-device copy.
            self.tmp_dir = staging_dir(parent, f".{self.out_dir.name}.tmp-")
        except OSError as e:
            raise ExportError(f"cannot write to {parent}: {e.strerror or e}") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp_dir is not None and self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir = None

    # ---- writing
    def path(self, name: str) -> Path:
        """Where to write bundle member ``name`` (relative, '/'-separated); parent folders are created."""
        if self.tmp_dir is None:
            raise RuntimeError("BundleWriter is used outside its with-block or after finish()")
        try:
            check_member_name(name)
        except ValueError as e:
            raise ExportError(f"bad bundle file name: {e}") from None
        if name == MANIFEST_NAME:
            raise ExportError(f"{MANIFEST_NAME} is written by finish(), not by hand")
        p = self.tmp_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_bytes(self, name: str, data: bytes) -> Path:
        p = self.path(name)
        p.write_bytes(data)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path(name)
        p.write_text(text, encoding="utf-8")
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, dump_json(obj))

    def copy(self, name: str, src: str | Path) -> Path:
        """Copy a file, or a directory tree (e.g. a .mlpackage), into the bundle as ``name``."""
        src, p = Path(src), self.path(name)
        if src.is_dir():
            shutil.copytree(src, p, symlinks=False)
        else:
            shutil.copyfile(src, p)
        return p

    # ---- publishing
    def file_table(self) -> dict[str, dict[str, Any]]:
        """sha256 and size of every file written so far, sorted by name."""
        assert self.tmp_dir is not None
        table: dict[str, dict[str, Any]] = {}
        for p in sorted(self.tmp_dir.rglob("*")):
            rel = p.relative_to(self.tmp_dir).as_posix()
            if p.is_symlink():
                raise ExportError(f"{rel}: symbolic links cannot go into a bundle")
            if p.is_file() and rel != MANIFEST_NAME:
                table[rel] = _file_entry(p)
        return dict(sorted(table.items()))

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write manifest.json (schema_version and files added) and publish the bundle at out_dir.

        ``manifest`` must hold at least ``target`` and ``runtime`` (ModelSpec.to_dict()). Returns the
        manifest as written.
        """
        if self.tmp_dir is None:
            raise RuntimeError("finish() must be called once, inside the with-block")
        reserved = {"schema_version", "files"}
        final = {"schema_version": MANIFEST_SCHEMA_VERSION}
        final.update({k: v for k, v in manifest.items() if k not in reserved})
        final["files"] = self.file_table()
        (self.tmp_dir / MANIFEST_NAME).write_text(dump_json(final), encoding="utf-8")
        try:  # never publish something the runtime cannot open
            open_bundle(self.tmp_dir, verify_hashes=False)
        except BundleError as e:
            raise ExportError(f"refusing to publish an invalid bundle: {e}") from None
        follow_umask(self.tmp_dir)
        self._publish()
        self.manifest = final
        self.published = True
        self.tmp_dir = None
        return final

    def _publish(self) -> None:
        assert self.tmp_dir is not None
        out = self.out_dir
        check_destination(out, self.force)  # it may have appeared while we were exporting
        if not out.exists():
            try:
                os.rename(self.tmp_dir, out)
            except OSError as e:
                raise ExportError(f"cannot publish {out}: {e.strerror or e}") from None
            return
        backup = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(out, backup)
        except OSError as e:
            raise ExportError(f"cannot move the old {out} aside: {e.strerror or e}") from None
        try:
            os.rename(self.tmp_dir, out)
        except OSError as e:
            os.rename(backup, out)  # put the old bundle back
            raise ExportError(f"cannot publish {out}: {e.strerror or e}") from None
        shutil.rmtree(backup, ignore_errors=True)
