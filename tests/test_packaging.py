"""`pip install .` ships everything the package needs at run time."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_module_and_data_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("arbooth-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = REPO / "arbooth_cli"
    wanted = {
        p.relative_to(REPO).as_posix()
        for p in pkg.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert wanted, "no package files found"
    missing = sorted(wanted - names)
    assert not missing, f"the wheel lacks {missing}"
    metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "arbooth = arbooth_cli.cli:main" in text
    assert not any(n.startswith(("tests/", "tools/", "examples/")) for n in names)
