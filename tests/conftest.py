"""Test-wide set-up: a private BentoML model store, so tests never touch ~/bentoml.

BentoML reads BENTOML_HOME once, when it is first imported, so this runs at conftest import time.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="manylabel-tests-bentoml-")
os.environ["BENTOML_HOME"] = _HOME
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
