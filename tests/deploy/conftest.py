"""One private BentoML store per session holding the tiny model and a real build of each bento
variant, shared by test_bentofile.py (the generated Dockerfile) and test_bento_build.py (serving
the built bento)."""

from __future__ import annotations

import pytest
from bentokit import Store, build_store


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(tmp_path_factory.mktemp("bento"))
