"""The studio: upload datasets, train on them and watch the jobs from the web page, on one machine.

`manylabel studio` serves `service.studio.service:ManyLabel`: the production service (every stored
model, the inspect routes, the page) plus this package's routes (`http.py`): datasets kept under the
data folder (`datasets.py`: images stored once by sha256, names and labels in SQLite) and training
jobs run one at a time in a child process (`runner.py`: `python -m service train`, so the server never
imports torch). The production Bento never imports this package.
"""
