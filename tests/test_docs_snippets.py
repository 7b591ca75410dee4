"""Every Python snippet of the README and docs/ runs as written on a freshly built `hard`, and prints what the
page shows in the ```output block that follows it (``...`` matches anything, as in doctest)."""

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qrsu_data import store

pytestmark = pytest.mark.slow  # end to end: see docs/development.md for the fast tier

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```\n(?:\n```output\n(.*?)^```\n)?", re.M | re.S)


def _snippets() -> list[tuple[str, str, str | None]]:
    """(page:line, code, expected output or None) of every ```python block of the pages."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            line = text[:m.start()].count("\n") + 1
            out.append((f"{page.relative_to(REPO)}:{line}", m.group(1), m.group(2)))
    return out


SNIPPETS = _snippets()


def test_the_loading_page_has_a_snippet_per_framework_with_its_output():
    loading = [(where, out) for where, _, out in SNIPPETS if where.startswith("docs/loading.md")]
    assert len(loading) >= 5 and all(out for _, out in loading)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs_data")
    store.build("hard", d)  # full size: the snippets use the standard config (~6 s)
    return d


@pytest.mark.parametrize("where, code, expected", SNIPPETS, ids=[w for w, _, _ in SNIPPETS])
def test_snippet_runs_and_prints_what_the_page_shows(data_dir, tmp_path, where, code, expected):
    if "import torch" in code:
        pytest.importorskip("torch")
    if "tf_dataset" in code:
        pytest.importorskip("tensorflow")
    env = {**os.environ, store.DATA_DIR_ENV: os.fspath(data_dir), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([os.fspath(REPO), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, f"snippet at {where} failed:\n{res.stderr[-3000:]}"
    if expected is not None:
        checker = doctest.OutputChecker()
        flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        assert checker.check_output(expected, res.stdout, flags), \
            f"{where} printed:\n{res.stdout}\nthe page shows:\n{expected}"
