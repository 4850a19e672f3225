"""Generate flwrmtls/proto from protos/, or check that the committed code is current.

python tools/genproto.py --out flwrmtls/proto     # regenerate (make proto)
python tools/genproto.py --check flwrmtls/proto   # exit 1 if stale (make proto-check)
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("flwrmtls/proto")
KEEP = {"__init__.py"}


def generate(into: Path) -> list[Path]:
    # the mypy plugins live beside this interpreter, which may not be on PATH
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    sources = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        *(str(source.relative_to(PROTO_ROOT)) for source in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((into / PACKAGE_DIR).iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path)
    group.add_argument("--check", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = {path.name: path for path in generate(Path(tmp)) if path.is_file()}
        if args.out is not None:
            target: Path = args.out
            for old in target.iterdir():
                if old.name not in KEEP and old.is_file():
                    old.unlink()
            for name, path in generated.items():
                shutil.copyfile(path, target / name)
            print(f"wrote {len(generated)} files to {target}")
            return 0
        target = args.check
        present = {p.name for p in target.iterdir() if p.is_file() and p.name not in KEEP}
        stale = sorted(
            name
            for name in set(generated) | present
            if name not in generated
            or name not in present
            or not filecmp.cmp(generated[name], target / name, shallow=False)
        )
        if stale:
            print(
                f"generated code is stale ({', '.join(stale)}): run `make proto`", file=sys.stderr
            )
            return 1
        print("generated code is current")
        return 0


if __name__ == "__main__":
    sys.exit(main())
