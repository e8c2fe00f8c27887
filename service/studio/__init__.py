"""The studio: upload datasets, label them, train on them and watch the jobs from the web page.

`manylabel studio` serves `service.studio.service:ManyLabel`: the production service (every stored
model, the inspect routes, the page) plus this package's routes (`app.py`, `labelling_routes.py`):
  * datasets kept under the data folder (`datasets.py`: images stored once by sha256, names and
    labels in SQLite, `db.py`);
  * the labelling loop (`labelling.py`: edits with their history and dataset versions;
    `suspects.py`: suspected label errors from a job's out-of-fold scores; `suggestions.py`: labels
    the newest model proposes for unlabelled images, and thumbnails);
  * training jobs run one at a time in a child process (`runner.py`: `python -m service train`, so
    the server never imports torch).
The production Bento never imports this package.
"""
