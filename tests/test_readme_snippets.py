"""Every Python snippet of the README's loading and model sections runs as written, on a freshly built `hard`."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qrsu_data import store

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Loading batches", "## Use the dataset from", "## Models")


def _snippets() -> list[tuple[str, str]]:
    """(heading, code) of every ```python block under the SECTIONS headings."""
    text = README.read_text()
    out = []
    for section in SECTIONS:
        start = text.index(section)
        end = text.find("\n## ", start + len(section))
        body = text[start:end if end != -1 else len(text)]
        heading = section
        for m in re.finditer(r"^(#{2,3} [^\n]*)$|^```python\n(.*?)^```$", body, re.M | re.S):
            if m.group(1):
                heading = m.group(1)
            else:
                out.append((heading.lstrip("# "), m.group(2)))
    return out


SNIPPETS = _snippets()


def test_the_sections_hold_a_snippet_per_framework():
    headings = [h for h, _ in SNIPPETS]
    assert headings[0] == "Loading batches"
    for framework in ("JAX and Grain", "PyTorch", "tf.data", "NumPy"):
        assert framework in headings, framework


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme_data")
    store.build("hard", d)  # full size: the snippets use the standard config (~6 s)
    return d


@pytest.mark.parametrize("heading,code", SNIPPETS, ids=[h for h, _ in SNIPPETS])
def test_snippet_runs(data_dir, tmp_path, heading, code):
    if "import torch" in code:
        pytest.importorskip("torch")
    if "tf_dataset" in code:
        pytest.importorskip("tensorflow")
    env = {**os.environ, store.DATA_DIR_ENV: os.fspath(data_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"snippet under {heading!r} failed:\n{out.stderr[-3000:]}"
    assert out.stdout.strip(), "every snippet prints what it shows"
