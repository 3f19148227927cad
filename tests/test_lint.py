"""The code base stays ruff-clean (style and lint rules in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "trcgl", "jobs", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_only_ray_modules_import_ray():
    offenders = []
    for path in (ROOT / "trcgl").rglob("*.py"):
        if path.name.startswith("ray_"):
            continue
        for line in path.read_text().splitlines():
            if line.strip().startswith(("import ray", "from ray")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"only trcgl/**/ray_*.py may import ray: {offenders}"
