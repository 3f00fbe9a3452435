"""The README's Python example runs as written and prints what its comment says."""
import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    example = blocks[0]
    result = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    # The last print's expected output is written in its trailing comment.
    expected = example.strip().splitlines()[-1].split("# ", 1)[1].strip()
    assert result.stdout.strip() == expected
