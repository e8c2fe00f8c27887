"""Every manylabel model in the BentoML store, served: opened on first use, kept in an LRU.

A request names a model as ``NAME`` (its newest version, looked up in the store each time, so a
version saved by a training job is served at once, without a restart) or ``NAME:VERSION``; no name
means the default model: ``MANYLABEL_MODEL`` (+ ``MANYLABEL_VERSION``) when set, else the newest
model in the store. Opening a model (verify its files, open its onnxruntime sessions, warm them
up) takes a second or so and happens on a worker thread, one opening per model at a time. At most
``MANYLABEL_MAX_MODELS`` stay open; the least recently used one is closed once no request holds it.
A production Bento carries only the models it was built with, so it serves exactly those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import ManylabelError, RequestError
from service.server.predictor import Predictor
from service.server.settings import Settings
from service.store import FRAMEWORK_LABEL, StoredModel, load_model

logger = logging.getLogger("bentoml.manylabel")

MAX_MODEL_CHARS = 300


@dataclass
class Served:
    """One open model: its predictor, its inspect views (None without records), its GET /model."""

    predictor: Predictor
    inspector: Any  # service.inspect.inspector.Inspector | None
    summary: dict[str, Any]
    users: int = 0
    evicted: bool = field(default=False, repr=False)

    @property
    def tag(self) -> str:
        return self.predictor.stored.tag


class Models:
    """The served models of one worker (thread-safe; `use` is the way requests take one)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_batch: Callable[[str, int, float], None] | None = None,
        open_inspector: Callable[[StoredModel], Any] = lambda stored: None,
    ) -> None:
        self.settings = settings
        self._on_batch = on_batch
        self._open_inspector = open_inspector
        self._open: OrderedDict[str, Served] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}
        self.default_tag: str | None = None

    # --- start-up and shutdown ------------------------------------------------------------------

    def open_default(self) -> Served | None:
        """Open the default model at start-up (a missing MANYLABEL_MODEL fails the start)."""
        if self.settings.model:
            stored = load_model(self.settings.model, self.settings.version)
        else:
            newest = newest_tag()
            if newest is None:
                logger.info("no manylabel model in the store yet: /predict answers 404 until one is saved")
                return None
            stored = load_model(newest)
        self.default_tag = stored.tag
        return self._get_open(stored.tag, stored)

    def close(self) -> None:
        with self._lock:
            served, self._open = list(self._open.values()), OrderedDict()
        for one in served:
            one.predictor.close()

    # --- lookup -----------------------------------------------------------------------------------

    def resolve(self, model: str | None) -> str:
        """The full tag a request means (may read the store: call it off the event loop)."""
        if model is None:
            if self.default_tag is not None:
                return self.default_tag
            newest = newest_tag()
            if newest is None:
                raise RequestError(
                    "model: the store holds no trained model yet; train one first", field="model", status=404
                )
            return newest
        if len(model) > MAX_MODEL_CHARS or not model.strip():
            raise RequestError("model: not a model name (empty or too long)", field="model")
        if model in self._open:  # an exact NAME:VERSION already open
            return model
        try:
            return load_model(model, verify=False).tag
        except ManylabelError as exc:
            raise RequestError(f"model: {exc}", field="model", status=404) from None

    def get(self, model: str | None) -> Served:
        """The open model a request means, opening it when needed (slow: off the event loop)."""
        tag = self.resolve(model)
        with self._lock:
            served = self._open.get(tag)
            if served is not None:
                self._open.move_to_end(tag)
                return served
            opening = self._opening.setdefault(tag, threading.Lock())
        with opening:  # one opening per model; others wait for it, then find it open
            with self._lock:
                if tag in self._open:
                    return self._open[tag]
            return self._get_open(tag, load_model(tag))

    async def find(self, model: str | None) -> Served:
        """`get` from the event loop: the open default or exact tag at once, else on a thread."""
        served = self._fast(model)
        return served if served is not None else await asyncio.to_thread(self.get, model)

    @contextlib.asynccontextmanager
    async def use(self, model: str | None) -> AsyncIterator[Served]:
        """Hold a model for one request: it is not closed while in use, even when evicted."""
        served = await self.find(model)
        with self._lock:
            served.users += 1
        try:
            yield served
        finally:
            with self._lock:
                served.users -= 1
                close = served.evicted and served.users == 0
            if close:
                served.predictor.close()

    def _fast(self, model: str | None) -> Served | None:
        """The hot path, without a store lookup: the default model, or an open exact tag."""
        tag = self.default_tag if model is None else model
        with self._lock:
            served = self._open.get(tag) if tag is not None else None
            if served is not None:
                self._open.move_to_end(tag)
        return served

    def _get_open(self, tag: str, stored: StoredModel) -> Served:
        predictor = Predictor(stored, self.settings, on_batch=self._on_batch)
        inspector = self._open_inspector(stored)
        if inspector is not None:  # one view of the custom thresholds for /predict and /thresholds
            inspector.custom = predictor.custom
        served = Served(predictor, inspector, predictor.summary())
        closing: list[Served] = []
        with self._lock:
            self._open[tag] = served
            while len(self._open) > self.settings.max_models:
                _, old = self._open.popitem(last=False)
                old.evicted = True
                if old.users == 0:
                    closing.append(old)
        for old in closing:
            logger.info("closing %s (least recently used of %d open)", old.tag, self.settings.max_models)
            old.predictor.close()
        provider = predictor.runtime.provider
        note = f" ({provider.note})" if provider.note else ""
        logger.info("manylabel serving %s on %s%s", tag, provider.active, note)
        return served

    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._open)


def newest_tag() -> str | None:
    """The tag of the most recently created manylabel model in the store, if any."""
    refs = stored_refs()
    return str(max(refs, key=lambda ref: ref.info.creation_time).tag) if refs else None


def stored_refs() -> list[Any]:
    """Every manylabel model version in the BentoML store (`bentoml.models.list` refs)."""
    import bentoml

    return [ref for ref in bentoml.models.list() if ref.info.labels.get("framework") == FRAMEWORK_LABEL]


def describe_stored(loaded: set[str]) -> list[dict[str, Any]]:
    """GET /models: every stored model, newest first, with what a person picks one by."""
    rows = []
    for ref in sorted(stored_refs(), key=lambda r: r.info.creation_time, reverse=True):
        try:
            stored = load_model(str(ref.tag), verify=False)
        except ManylabelError as exc:  # listed, with why it cannot be served
            rows.append({"name": ref.tag.name, "version": ref.tag.version, "error": str(exc)})
            continue
        manifest = stored.manifest
        quality = {}
        for which, entry in manifest.models.items():
            val = entry.metrics.get("validation")
            quality[which] = {"map": val.map if val else None, "micro_f1": val.micro_f1 if val else None}
        rows.append(
            {
                "name": stored.name,
                "version": stored.version,
                "tag": stored.tag,
                "created": manifest.created_at.isoformat(),
                "labels": manifest.labels,
                "validation": quality,
                "precisions": sorted({"fp32", *_variants(manifest)}),
                "loaded": stored.tag in loaded,
            }
        )
    return rows


def _variants(manifest: Any) -> set[str]:
    names: set[str] = set()
    for entry in manifest.models.values():
        variants = getattr(entry, "variants", None) or {}
        names.update(k for k, v in variants.items() if getattr(v, "kept", True))
    return names
