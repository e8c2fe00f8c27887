"""Service settings: one pydantic object, read once from `MANYLABEL_*` environment variables.

Every knob has its default and a one-line comment here. Tuning values left at `None` are chosen
per execution provider by `Settings.tuning()`, from measurements on a 2-core AVX2 CPU
(EfficientNet-Lite1, 240 px, onnxruntime alone): one call alone is fastest with every core as
intra-op threads (fp32 batch 1: 75 images/s vs 44 with one thread), but under load the best use of
the cores is one inference call per core, each on a 1-thread session (2 calls x batch 1-4: 96-105
images/s; one 2-thread call at batch 8: 87, batch 16: 70, as activations outgrow the caches). So the
CPU runs `cores` inference workers, batches greedily (no waiting), and a call that overlaps others
uses a narrow session of cores / workers threads (`graph.Graph`). How big a batch pays depends on
the precision: two 1-thread calls, medians of 7 alternating rounds, fp32 batch 1 / 2 / 3 / 4: 78 /
79 / 73 / 71 images/s (its activations outgrow the caches), int8: 123 / 129 / 134 / 137 (a quarter
of the bytes); served at 8 in flight, fp32 at batch 1 beat batch 4 in 4 of 5 alternating rounds
(+8 %), int8 at batch 4 beat 1 and 2 in 5 of 5. Hence 1 for fp32 and 4 for int8 on a CPU. A GPU
wants one worker, bigger batches and a short wait to fill them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from service.errors import first_error

ENV_PREFIX = "MANYLABEL_"
Provider = Literal["auto", "cpu", "cuda"]
PrecisionSetting = Literal["auto", "fp32", "int8"]


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- which model ---------------------------------------------------------------------------
    model: str | None = None  # default model (NAME) of requests naming none; None: the store's newest
    version: str | None = None  # its store version; None = latest
    max_models: int = Field(4, ge=1)  # models kept open at once (least recently used closed first)
    # --- execution -----------------------------------------------------------------------------
    provider: Provider = "auto"  # auto: CUDA when onnxruntime offers it and it initialises, else CPU
    # auto: int8 on CPU where the model has a kept int8 variant (fp32 also served, per request), fp32
    # on CUDA (int8 and fp16 are unmeasured on a GPU); fp32 / int8: that precision only.
    precision: PrecisionSetting = "auto"
    intra_op_threads: int | None = Field(None, ge=1)  # threads per onnxruntime call; None: CPU cores
    inference_workers: int | None = Field(None, ge=1)  # concurrent onnxruntime calls; None: intra CPU, 1 GPU
    decode_threads: int | None = Field(None, ge=1)  # image decode threads; None: CPU cores
    max_batch_size: int | None = Field(None, ge=1)  # images per call; None: CPU fp32 1, int8 4; GPU 64
    max_latency_ms: float | None = Field(None, ge=0)  # longest wait for batch-mates; None: 0 CPU, 5 GPU
    max_queue: int = Field(2048, ge=1)  # images waiting for inference before answering 503
    # After answering its only client, the event loop keeps polling this long for the next request
    # instead of sleeping (`http.linger`: a halted VM core wakes slowly); 0: off.
    linger_ms: float = Field(2.0, ge=0, le=100)
    # --- limits on what a request may send -----------------------------------------------------
    max_files: int = Field(1000, ge=1)  # images per request, zip members included (413 above)
    max_request_bytes: int = Field(256 << 20, ge=1024)  # request body size (413 above)
    max_zip_bytes: int = Field(256 << 20, ge=1024)  # uncompressed size of all zips in a request
    # Request bytes (bodies and unzipped images) all requests of a worker may hold at once; past it a
    # request gets 503 + Retry-After: one 3 GiB replica then never holds more than ~1.5 GiB of uploads.
    max_inflight_bytes: int = Field(1 << 30, ge=1 << 20)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)  # a client silent this long mid-body: 408
    max_pixels: int = Field(64_000_000, ge=1)  # pixels per image: decompression-bomb guard
    max_bundle_bytes: int = Field(1 << 30, ge=1024)  # a /predict_bundle file (413 above)
    # --- writes (POST /thresholds) -------------------------------------------------------------
    # Set: writes need `Authorization: Bearer <token>`. Unset: writes only from loopback clients
    # that name a loopback Host (a web page elsewhere cannot write through DNS rebinding).
    api_token: SecretStr | None = None
    # JSON {"best": {label: value}, "last": {...}}: the custom thresholds, pinned by the deployment
    # (a ConfigMap in Kubernetes, the same for every replica); writes are then refused with 409.
    thresholds: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `MANYLABEL_<FIELD>` variables; empty ones keep the default."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[key]
            for name in cls.model_fields
            if (key := ENV_PREFIX + name.upper()) in environ and environ[key].strip() != ""
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            where, message = first_error(exc, show_input=False)
            key = ENV_PREFIX + where.split(".")[0].upper()
            shown = "(hidden)" if key.endswith("TOKEN") else repr(environ.get(key, "")[:100])
            raise SettingsError(f"{key}={shown}: {message} (unset it to use the default)") from exc

    def tuning(self, *, gpu: bool) -> Tuning:
        """Concrete execution values for the provider actually in use."""
        cores = os.cpu_count() or 1
        intra = self.intra_op_threads or cores  # few ops stay on the CPU with a GPU
        workers = self.inference_workers or (1 if gpu else intra)  # CPU: a call per core under load
        return Tuning(
            intra_op_threads=intra,
            crowded_intra_op_threads=max(1, intra // workers),
            inference_workers=workers,
            decode_threads=self.decode_threads or cores,
            max_batch_size=self.max_batch_size or (64 if gpu else 1),
            int8_max_batch_size=self.max_batch_size or (64 if gpu else 4),
            max_latency_ms=self.max_latency_ms if self.max_latency_ms is not None else (5.0 if gpu else 0.0),
        )


@dataclass(frozen=True)
class Tuning:
    intra_op_threads: int  # of a call that runs alone
    crowded_intra_op_threads: int  # of a call that overlaps others (CPU): intra / workers
    inference_workers: int
    decode_threads: int
    max_batch_size: int  # of the fp32 graphs
    int8_max_batch_size: int  # of the int8 graphs
    max_latency_ms: float

    def batch_size(self, precision: str) -> int:
        """The most images in one call of a graph of `precision` (fp32 or int8)."""
        return self.int8_max_batch_size if precision == "int8" else self.max_batch_size


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import time)."""
    return Settings.from_env()
