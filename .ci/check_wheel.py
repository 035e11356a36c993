"""Check what a built wheel holds: the package with ``py.typed``, the LICENSE, and nothing else.

Usage: ``python .ci/check_wheel.py WHEEL LICENSE``. Prints one line per check; exits 1 if any fails.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = "lightning_reg"


def main(wheel: Path, license_file: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(name.split("/")[0] for name in names if ".dist-info/" in name)
        license_name = f"{dist_info}/licenses/{license_file.name}"
        checks = {
            f"{PACKAGE}/py.typed is in the wheel": f"{PACKAGE}/py.typed" in names,
            f"{license_name} is {license_file}": license_name in names
            and archive.read(license_name) == license_file.read_bytes(),
        }
    outside = [name for name in names if name.split("/")[0] not in (PACKAGE, dist_info)]
    checks[f"nothing outside {PACKAGE}/ and {dist_info}/"] = not outside
    modules = sum(name.endswith(".py") for name in names)
    print(f"{wheel.name}: {len(names)} files, {modules} modules")
    for check, passed in checks.items():
        print(f"  {'ok' if passed else 'FAILED'}: {check}")
    if outside:
        print("  outside the package:", *outside, sep="\n    ")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
