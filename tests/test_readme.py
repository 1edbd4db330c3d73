"""The README's "Adding a method" example runs as written."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_adding_a_method_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- example:add-method -->\s*```python\n(.*?)```\s*<!-- /example:add-method -->", readme, re.S)
    assert block, "README lost its add-method example"
    script = tmp_path / "example.py"
    script.write_text(block.group(1) + "\nprint('example ok')\n")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "example ok" in out.stdout
