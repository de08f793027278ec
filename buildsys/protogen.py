"""Generate the Python gRPC stubs from proto/ (run by the build backend).

The stubs are build output (never edited, never committed). They land in the
staged ``llamagate`` package (``.pkg/llamagate/v1``) so that clients import
them as ``from llamagate.v1 import llamagate_pb2`` -- the same path protoc
derives from the proto package ``llamagate.v1``. ``python buildsys/protogen.py``
regenerates them in a development checkout.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate_stubs(out_dir: Path = ROOT / ".pkg") -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[str(p) for p in protos]}")
    for proto in protos:
        package_dir = out_dir / proto.parent.relative_to(PROTO_DIR)
        while package_dir != out_dir:
            (package_dir / "__init__.py").touch()
            package_dir = package_dir.parent
    return protos


if __name__ == "__main__":
    generate_stubs()
