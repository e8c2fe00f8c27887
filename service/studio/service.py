"""The studio service: `bentoml serve service.studio.service:ManyLabel` (what `manylabel studio` runs).

The production service, every stored model served as in `service.server.service`, with the studio's
routes (`app.py`) mounted on it. The production service module never imports this one, so a
production Bento carries no studio and no training code.
"""

from __future__ import annotations

import bentoml

with bentoml.importing():
    from service.server.service import ManyLabel
    from service.studio.app import studio_app

# Its routes (/datasets, /jobs) are not the production app's: BentoML's PassiveMount at "/" routes to
# the app only the paths it has a route for.
ManyLabel.mount_asgi_app(studio_app, path="/", name="studio")

__all__ = ["ManyLabel"]
