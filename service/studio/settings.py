"""The studio's settings: where it keeps its data, read once from `MANYLABEL_DATA`.

The serving knobs stay in `service.server.settings` (the studio serves with the same ones); these are
the studio's own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

DATA_ENV = "MANYLABEL_DATA"


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/manylabel`, i.e. ~/.local/share/manylabel by default."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "manylabel"


class StudioSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    data: Path  # datasets (studio.db, images/), job folders (jobs/) and training's feature cache (cache/)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StudioSettings:
        environ = os.environ if environ is None else environ
        given = environ.get(DATA_ENV, "").strip()
        return cls(data=Path(given).expanduser().resolve() if given else default_data_dir())

    @property
    def database(self) -> Path:
        return self.data / "studio.db"

    @property
    def images(self) -> Path:
        return self.data / "images"

    @property
    def jobs(self) -> Path:
        return self.data / "jobs"

    @property
    def cache(self) -> Path:
        """Training's feature + backbone cache (`manylabel train --cache-dir`), kept with the data."""
        return self.data / "cache"


@lru_cache(maxsize=1)
def get_studio_settings() -> StudioSettings:
    """The process-wide studio settings, read on first use (never at import time)."""
    return StudioSettings.from_env()
