"""The documentation's Python blocks run as written: each page's blocks in order, as one script, in a fresh store.

The Python API lives in docs/python-api.md; a ```python block anywhere else in README.md or docs/ runs too.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def test_the_python_api_page_has_python_blocks():
    assert len(python_blocks(REPO / "docs" / "python-api.md")) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(page, karp_home, tmp_path):
    script = tmp_path / f"{page.stem}_blocks.py"
    script.write_text("\n".join(python_blocks(page)))
    env = {**os.environ, "KARP_HOME": str(karp_home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if page.name == "python-api.md":
        assert "EvalResult(n=359" in proc.stdout and "EvalResult(n=200" in proc.stdout
        assert "'kind': 'python'" in proc.stdout
