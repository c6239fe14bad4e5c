"""The documentation site builds: ``mkdocs build --strict`` (mkdocs.yml; docs/ and the API reference from the
docstrings), the way CI builds it. A broken link, a page missing from the nav or a docstring that mkdocstrings
cannot render fails the build."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("CapNorm", "NonparametricMLP", "AdaRad", "AdaRadM", "omega_in", "omega_out", "load",
                 "TrainedNetwork", "NonparametricClassifier", "save_model", "to_sequential", "ModelFileError"):
        assert 'id="npnn.' in api and name in api, name
