"""Builds chaostoolkit-faultline with its gRPC stubs generated from the repository's proto/.

The stubs are never committed: `build_py` compiles proto/faultline/v1/*.proto with grpcio-tools
into the package `chaosfaultline.proto` of the build, rewriting the generated imports
(`from faultline.v1 import ...`) to that package, and records the SHA-256 of every .proto file it
compiled in `chaosfaultline.proto.PROTO_SHA256`, so that a test can tell an installed copy built
from another proto/ apart. The build fails when proto/ cannot be found, when protoc fails, or when
the generated code needs newer grpcio or protobuf than pyproject.toml declares.

proto/ is looked for two directories up (integrations/chaostoolkit/ in the repository), or where
FAULTLINE_PROTO_DIR says.
"""

import hashlib
import os
import pathlib
import re
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PACKAGE = "chaosfaultline.proto"
# What pyproject.toml declares; the generated code states what it needs, checked below.
GRPCIO_AT_LEAST = (1, 85, 4)
PROTOBUF_AT_LEAST = (7, 35, 1)


def proto_root() -> pathlib.Path:
    """The repository's proto/ directory, holding faultline/v1/*.proto."""
    root = pathlib.Path(os.environ.get("FAULTLINE_PROTO_DIR", HERE.parent.parent / "proto"))
    if not any(root.glob("faultline/v1/*.proto")):
        raise SystemExit(
            f"no faultline/v1/*.proto under {root}: build chaostoolkit-faultline from a checkout "
            "of the faultline repository (integrations/chaostoolkit), or set FAULTLINE_PROTO_DIR"
        )
    return root


def check_versions(generated: pathlib.Path) -> None:
    """Fails unless the generated code runs with the grpcio and protobuf versions declared."""
    for path in generated.glob("*_pb2_grpc.py"):
        found = re.search(r"GRPC_GENERATED_VERSION = '(\d+)\.(\d+)\.(\d+)'", path.read_text())
        if found is None or tuple(map(int, found.groups())) > GRPCIO_AT_LEAST:
            raise SystemExit(f"{path.name} needs a newer grpcio than pyproject.toml declares")
    for path in generated.glob("*_pb2.py"):
        found = re.search(
            r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", path.read_text()
        )
        if found is None or tuple(map(int, found.groups())) > PROTOBUF_AT_LEAST:
            raise SystemExit(f"{path.name} needs a newer protobuf than pyproject.toml declares")


def generate(root: pathlib.Path, package_dir: pathlib.Path) -> None:
    """Compiles the .proto files under `root` into `package_dir` (Python, gRPC and .pyi)."""
    from grpc_tools import protoc

    files = sorted(p.relative_to(root).as_posix() for p in root.glob("faultline/v1/*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="chaosfaultline-stubs-") as out:
        status = protoc.main(
            ["grpc_tools.protoc", f"-I{root}", f"-I{include}", f"--python_out={out}",
             f"--grpc_python_out={out}", f"--pyi_out={out}", *files]
        )
        if status != 0:
            raise SystemExit(f"grpc_tools.protoc failed with status {status} on {root}")
        generated = pathlib.Path(out) / "faultline" / "v1"
        check_versions(generated)
        # Nothing from an earlier build may stay: a removed .proto takes its stubs with it.
        shutil.rmtree(package_dir, ignore_errors=True)
        package_dir.mkdir(parents=True)
        for path in sorted(generated.iterdir()):
            text = re.sub(
                r"^from faultline\.v1 import ", f"from {PACKAGE} import ", path.read_text(),
                flags=re.MULTILINE,
            )
            (package_dir / path.name).write_text(text)
    digests = {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in files
    }
    lines = "".join(f"    {name!r}: {digest!r},\n" for name, digest in digests.items())
    (package_dir / "__init__.py").write_text(
        '"""gRPC stubs of the faultline API, generated from proto/ when this package was built."""\n'
        "\n"
        "# The SHA-256 of each .proto file the stubs were generated from.\n"
        f"PROTO_SHA256 = {{\n{lines}}}\n"
    )


class BuildWithStubs(build_py):
    """build_py, then the stubs into the built package."""

    def run(self) -> None:
        super().run()
        generate(proto_root(), pathlib.Path(self.build_lib) / PACKAGE.replace(".", "/"))


setup(cmdclass={"build_py": BuildWithStubs})
