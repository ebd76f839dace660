"""The README's Python blocks run as written: in order, as one script, in a fresh store."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(python_blocks()) >= 2


@pytest.mark.slow
def test_readme_python_blocks_run(karp_home, tmp_path):
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n".join(python_blocks()))
    env = {**os.environ, "KARP_HOME": str(karp_home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "EvalResult(n=359" in proc.stdout and "EvalResult(n=200" in proc.stdout
    assert "'kind': 'python'" in proc.stdout
