"""service.inspect.queries: the inspect routes' query models, on the hand-made records of test_inspect.py.

A query string is validated into a model, then answered by the `Inspector` method of the same name with
``query.arguments()``, exactly as the service's routes do (the HTTP refusals are tested in tests/ui).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError
from test_inspect import write_model

from service.errors import RequestError
from service.inspect import views
from service.inspect.inspector import Inspector
from service.inspect.queries import ROUTES as QUERIES
from service.manifest import Manifest


@pytest.fixture
def inspector(tmp_path: Path) -> Inspector:
    folder = write_model(tmp_path)
    return Inspector(folder, Manifest.read(folder, verify=False), tag="pets:v1")


def ask(inspector: Inspector, route: str, params: dict[str, str]) -> dict:
    """What GET /{route}?{params} answers."""
    return getattr(inspector, route)(**QUERIES[route].model_validate(params).arguments())


def test_query_strings_are_answered(inspector: Inspector) -> None:
    params = {"which": "best", "split": "validation", "filter": "incorrect", "label": "cat", "page_size": "1"}
    page = ask(inspector, "predictions", params)
    assert (page["total"], [i["name"] for i in page["items"]], page["model"]) == (2, ["b.jpg"], "pets:v1")
    page = ask(inspector, "predictions", {"split": "validation", "thresholds": '{"cat": 0.05}'})
    assert page["overridden"] == ["cat"] and page["thresholds"]["cat"] == 0.05
    assert ask(inspector, "predictions", {"label": "", "view": ""})["total"] == 6  # "" = not given
    assert list(ask(inspector, "stats", {"split": "train", "threshold": "0.5"})["splits"]) == ["train"]
    assert ask(inspector, "stats", {"which": "last", "model": "pets:v1"})["which"] == "last"
    assert ask(inspector, "pr_curve", {"label": "cat", "max_points": "5"})["label"] == "cat"
    assert ask(inspector, "diff", {})["split"] == "validation"
    assert ask(inspector, "pairs", {"split": "validation", "top": "1"})["confused"]
    assert ask(inspector, "mislabelled", {"limit": "2", "min_gap": "0.5"})["items"][0]["name"] == "t1.jpg"


@pytest.mark.parametrize(
    ("route", "params", "field", "kind"),
    [
        ("stats", {"colour": "red"}, "colour", "extra_forbidden"),
        ("stats", {"model": "x" * 301}, "model", "string_too_long"),
        ("stats", {"threshold": "high"}, "threshold", "float_parsing"),
        ("stats", {"thresholds": "{bad json"}, "thresholds", "json_object"),
        ("stats", {"thresholds": "[0.3]"}, "thresholds", "json_object"),
        ("predictions", {"page": "two"}, "page", "int_parsing"),
        ("mislabelled", {"min_gap": "wide"}, "min_gap", "float_parsing"),
        ("diff", {"which": "best"}, "which", "extra_forbidden"),  # diff compares both
    ],
)
def test_malformed_parameters_fail_validation(route: str, params: dict, field: str, kind: str) -> None:
    with pytest.raises(ValidationError) as err:
        QUERIES[route].model_validate(params)
    first = err.value.errors()[0]
    assert (first["loc"], first["type"]) == ((field,), kind)


@pytest.mark.parametrize(
    ("route", "params", "field"),
    [
        ("stats", {"split": "test"}, "split"),
        ("stats", {"which": "middle"}, "which"),
        ("stats", {"threshold": "1.5"}, "threshold"),
        ("stats", {"thresholds": '{"horse": 0.5}'}, "thresholds"),
        ("pr_curve", {"label": "horse"}, "label"),
        ("pr_curve", {"max_points": "2"}, "max_points"),
        ("predictions", {"filter": "sideways"}, "filter"),
        ("predictions", {"profile": "strict"}, "profile"),
        ("predictions", {"page_size": "501"}, "page_size"),
        ("diff", {"limit": "501"}, "limit"),
        ("mislabelled", {"limit": "501"}, "limit"),
        ("mislabelled", {"which": "first"}, "which"),
    ],
)
def test_values_are_checked_by_the_core(inspector: Inspector, route: str, params: dict, field: str) -> None:
    """Well-formed but refused: the same RequestError (field, message) as the CLI gets."""
    with pytest.raises(RequestError) as err:
        ask(inspector, route, params)
    assert (err.value.status, err.value.field) == (400, field)
    assert str(err.value).startswith(f"{field}")


@pytest.mark.parametrize("route", sorted(QUERIES))
def test_query_defaults_are_the_inspectors(route: str) -> None:
    """The defaults shown on /docs are the ones the CLI and Python callers get."""
    method = dict(inspect.signature(getattr(Inspector, route)).parameters)
    if route == "predictions":  # Inspector.predictions passes its options on to views.predictions
        method = {**inspect.signature(views.predictions).parameters, **method}
    for name, field in QUERIES[route].model_fields.items():
        if name in ("model", "profile", "threshold", "thresholds"):  # no default: see `resolve`
            continue
        assert name in method, (route, name)
        assert field.default == method[name].default, (route, name)


@pytest.mark.parametrize("route", sorted(QUERIES))
def test_every_parameter_is_documented(route: str) -> None:
    schema = QUERIES[route].model_json_schema()
    assert schema["additionalProperties"] is False
    model: type[BaseModel] = QUERIES[route]
    for name, field in model.model_fields.items():
        assert field.description or schema["properties"][name].get("enum"), (route, name)
