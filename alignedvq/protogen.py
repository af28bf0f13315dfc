"""Regenerates the committed Python stubs from protos/ (``make proto``). The codegen policy is
"committed stubs": a test regenerates into a temporary folder and checks nothing changes."""

from __future__ import annotations

import sys
from pathlib import Path

from common.paths import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    return sorted(Path(out_dir).glob("alignedvq/**/*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    sys.exit(0)
