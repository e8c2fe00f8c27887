"""The inspect questions as pydantic models: one per HTTP route, the query string's vocabulary.

`service.server.http.inspect` declares them as FastAPI query models (``Annotated[StatsQuery,
Query()]``), so the routes list their parameters on the OpenAPI page, and answers with
``Inspector.<route>(**query.arguments())``. Choices (split, profile, filter...) are typed as text and
checked by the core (`service.thresholds.check_choice`), so the service and the CLI give the same
message; the schema still lists them as an enum. Numeric ranges are checked there too, for the same
reason. An unknown parameter is refused (``extra="forbid"``), and an empty one means "not given", as
an HTML form sends it.

``which`` is best | last; ``model`` is a stored model, NAME or NAME:VERSION, and must be the one served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from service.custom_thresholds import BOTH
from service.inspect.records import FILTERS, MAX_PAGE_SIZE, SORTS, SPLITS, VIEWS
from service.manifest import WHICH_MODELS
from service.thresholds import PROFILES


def _choice(choices: Sequence[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(choices)})


def _json_object(value: Any) -> Any:
    """A query string's JSON object label -> threshold (the values are checked by the core)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise PydanticCustomError(
            "json_object",
            '{shown} is not a JSON object label -> threshold, e.g. {"cat": 0.4}',
            {"shown": repr(value[:100])},
        )
    return parsed


Which = Annotated[str, _choice(WHICH_MODELS)]
Split = Annotated[str, _choice(SPLITS)]
Profile = Annotated[str | None, _choice(PROFILES)]
LabelValues = Annotated[
    dict[str, Any] | None,
    BeforeValidator(_json_object),
    WithJsonSchema({"type": "string", "example": '{"cat": 0.4}'}),
]


class InspectQuery(BaseModel):
    """Parameters every inspect route takes."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, max_length=300, description="stored model NAME or NAME:VERSION (default: the one served)"
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v != ""}
        return data

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the `Inspector` method answering this route."""
        return self.model_dump(exclude={"model"})


class ThresholdQuery(InspectQuery):
    """The model and thresholds of a view; what is tried here is not saved (see POST /thresholds)."""

    which: Which = Field("best", description="best (lowest validation loss) or last model")
    profile: Profile = Field(
        None, description="base thresholds (default: the saved custom ones once any is set, else optimized)"
    )
    threshold: float | None = Field(None, description="one threshold in [0, 1] for every label")
    thresholds: LabelValues = Field(
        None, description='JSON object label -> threshold in [0, 1], e.g. {"cat": 0.4}; others keep theirs'
    )


class StatsQuery(ThresholdQuery):
    """Statistics of train and validation (or one split) at the thresholds, with confusion counts."""

    split: Annotated[str | None, _choice(SPLITS)] = Field(None, description="default: train and validation")


class CurveQuery(ThresholdQuery):
    """Precision-recall curves (pooled and per label, or one label's) with their operating points."""

    split: Split = "validation"
    label: str | None = Field(None, description="one label's curve (default: each label's and the pooled)")
    max_points: int = Field(200, description="points per curve, 3 to 5000")


class PredictionsQuery(ThresholdQuery):
    """One page of the stored predictions of a split, filtered and sorted."""

    split: Split = "validation"
    filter: Annotated[str, _choice(FILTERS)] = Field("all", description="which images")
    label: str | None = Field(None, description="narrow the filter and the sort to this label")
    sort: Annotated[str, _choice(SORTS)] = "row"
    order: Annotated[str | None, _choice(("asc", "desc"))] = Field(
        None, description="default: asc for row and name, desc for score and wrong"
    )
    page: int = Field(1, description="from 1; a page past the end is empty")
    page_size: int = Field(50, description=f"1 to {MAX_PAGE_SIZE}")
    view: Annotated[str, _choice(VIEWS)] = Field(
        "advanced", description="basic: the predicted labels; advanced: every label's score and verdict"
    )


class DiffQuery(InspectQuery):
    """Best vs last, each at its own thresholds of `profile`: AP, F1 and the images whose verdict
    changes, per label."""

    split: Split = "validation"
    profile: Profile = Field(None, description="thresholds of both models (default as for the views)")
    limit: int = Field(20, description=f"image names listed per change, 0 to {MAX_PAGE_SIZE}")


class PairsQuery(ThresholdQuery):
    """The label pairs most often confused, and most often given together."""

    split: Split = "validation"
    top: int = Field(10, description="pairs listed per kind")


class MislabelledQuery(InspectQuery):
    """(image, label) pairs whose out-of-fold score contradicts the given label: likely mislabels."""

    which: Which = Field("best", description="best or last model")
    split: Annotated[str | None, _choice(SPLITS)] = Field(None, description="default: train and validation")
    limit: int = Field(50, description=f"candidates listed, 0 to {MAX_PAGE_SIZE}")
    min_gap: float = Field(0.5, description="the least |label - score| listed, in [0, 1]")


# GET /{route} -> the model of its query string; `Inspector.<route>` answers it.
ROUTES: dict[str, type[InspectQuery]] = {
    "stats": StatsQuery,
    "pr_curve": CurveQuery,
    "predictions": PredictionsQuery,
    "diff": DiffQuery,
    "pairs": PairsQuery,
    "mislabelled": MislabelledQuery,
}


# Documents POST /thresholds on the OpenAPI page; `Inspector.update_thresholds` checks the body itself.
class ThresholdChange(BaseModel):
    """A change of the saved custom thresholds: `which`, and one of `set`, `all` or `reset`."""

    model_config = ConfigDict(extra="forbid")

    which: Annotated[str, _choice((*WHICH_MODELS, BOTH))] = Field(
        "best", description="model to change (default best; both for reset)"
    )
    set: dict[str, float] | None = Field(None, description="label -> threshold in [0, 1] to save")
    all: float | None = Field(None, description="one threshold in [0, 1] for every label")
    reset: bool | list[str] | None = Field(None, description="back to optimised: true (all labels) or labels")
