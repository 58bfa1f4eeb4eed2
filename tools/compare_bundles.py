"""Compare two bundles file by file: are their artifacts the same bytes? (the "no behaviour change" proof).

    python tools/compare_bundles.py dist/android /tmp/before/android

Prints one sha256 per artifact and exits 1 on any difference. Canonicalised first, because these
bytes change between two runs of the same export, or with nothing but the exporter's source moved:
an ``.onnx`` graph's nodes carry the exporter's stack traces (file paths, line numbers, class names;
dropped here, the graph and weights are compared), a Core ML ``model.mlmodel`` is a protobuf whose
map fields serialise in hash order (re-serialised deterministically here), an ``.mlpackage``'s
``Manifest.json`` names its items by random UUIDs (compared without them). ``manifest.json`` holds
timings, so only its content minus ``stage_seconds`` is compared; ``parity.json`` is compared as is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# Node metadata torch.onnx.export records for debugging: the exporting checkout's file paths and line
# numbers and the Python class names. Any code move changes them; the graph itself does not change.
EXPORTER_DEBUG_KEYS = {"pkg.torch.onnx.stack_trace", "pkg.torch.onnx.class_hierarchy", "namespace"}


def canonical_bytes(path: Path) -> bytes:
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(path, load_external_data=False)
        for node in model.graph.node:  # the exporter's debug record: source paths, line numbers, class names
            keep = [p for p in node.metadata_props if p.key not in EXPORTER_DEBUG_KEYS]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        return model.SerializeToString(deterministic=True)
    if path.name == "model.mlmodel":
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model()
        spec.ParseFromString(path.read_bytes())
        return spec.SerializeToString(deterministic=True)
    if path.name == "Manifest.json" and path.parent.suffix == ".mlpackage":
        items = json.loads(path.read_text())["itemInfoEntries"].values()
        return json.dumps(sorted(items, key=lambda i: i["path"]), sort_keys=True).encode()
    if path.name == "manifest.json" and path.parent.suffix != ".mlpackage":
        manifest = json.loads(path.read_text())
        for key in ("stage_seconds", "files"):  # timings; hashes of files compared one by one here
            manifest.pop(key, None)
        return json.dumps(manifest, sort_keys=True).encode()
    return path.read_bytes()


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(canonical_bytes(p)).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    a, b = digests(args.a), digests(args.b)
    same = True
    for name in sorted(set(a) | set(b)):
        equal = a.get(name) == b.get(name)
        same &= equal
        print(f"{'same' if equal else 'DIFF'}  {a.get(name, '-')[:16]}  {b.get(name, '-')[:16]}  {name}")
    print("identical" if same else "different")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
