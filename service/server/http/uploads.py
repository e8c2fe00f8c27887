"""Reading uploads safely: multipart bodies, zips of images, form options, local files for the CLI.

BentoML 1.4.39 answers 500 to a malformed multipart body, to one without a boundary and to a file
name over ~250 characters (it becomes a temp-file suffix), loses the original file names and
`json.loads` every form field. `service.multipart.MultipartReader` therefore parses the predict
requests (for `predict_routes.PredictRoutes`), in memory and within these limits, into a `Form`.
Nothing here turns an uploaded name into a path.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from service.errors import ManylabelError
from service.preprocess import is_image_name

logger = logging.getLogger(__name__)

IMAGES_FIELD = "images"
MAX_NAME_BYTES = 255  # one file name, as on every common filesystem
MAX_PATH_BYTES = 1024  # a path inside a zip
MAX_FIELD_BYTES = 64 << 10  # a non-file form field (a JSON thresholds object is far smaller)


class UploadError(ManylabelError):
    """A request the service refuses; carries the HTTP status and the field at fault."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None, file: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.file = file

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self)}
        if self.field is not None:
            body["field"] = self.field
        if self.file is not None:
            body["file"] = self.file
        return body


@dataclass(frozen=True)
class Limits:
    max_files: int = 1000
    max_request_bytes: int = 256 << 20
    max_zip_bytes: int = 1 << 30


@dataclass(frozen=True)
class InputFile:
    """One image to score: the name the client gave (for display only) and its bytes."""

    name: str
    data: bytes


@dataclass
class Part:
    field: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Form:
    files: list[Part]
    fields: dict[str, list[str]]


# --- names and sizes ------------------------------------------------------------------------------


def decode_text(raw: bytes | bytearray) -> str:
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(raw).decode("latin-1")


def check_name(name: str, *, field: str) -> None:
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UploadError(
            f"{field}: file name {name[:40]!r}… is {len(name.encode('utf-8'))} bytes long, over the "
            f"limit of {MAX_NAME_BYTES}; rename the file",
            field=field,
            file=name[:MAX_NAME_BYTES],
        )


def too_large(size: int, limit: int) -> UploadError:
    return UploadError(
        f"request body of {size:,}+ bytes is over the limit of {limit:,} bytes; split it into several "
        "requests",
        status=413,
    )


def too_many(count: int, limit: int) -> UploadError:
    return UploadError(
        f"{IMAGES_FIELD}: {count}+ files is over the limit of {limit} per request; split them into "
        "several requests",
        status=413,
        field=IMAGES_FIELD,
    )


# --- form options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    which: str = "best"
    threshold: float | None = None
    thresholds: dict[str, Any] | None = None
    format: str | None = None


def form_from_values(values: dict[str, Any]) -> Form:
    """The `Form` an in-process API call stands for: `images` are local paths, other values typed
    (JSON-encoded here, so `parse_options` checks them exactly as it checks an HTTP form)."""
    files = [
        Part(field=IMAGES_FIELD, filename=Path(p).name, data=bytearray(Path(p).read_bytes()))
        for p in values.get(IMAGES_FIELD) or []
    ]
    fields = {
        name: [value if isinstance(value, str) else json.dumps(value)]
        for name, value in values.items()
        if name != IMAGES_FIELD and value is not None
    }
    return Form(files=files, fields=fields)


def parse_options(fields: dict[str, list[str]], *, formats: Sequence[str] = ()) -> Options:
    """Validate the non-file form fields; `formats` non-empty allows `format` (default: the first).

    Values may be plain (`best`, `0.5`) or JSON-encoded (`"best"`), as BentoML's client sends them.
    """
    allowed = {"model", "threshold", "thresholds"} | ({"format"} if formats else set())
    for name, values in fields.items():
        if name not in allowed:
            raise UploadError(
                f"unknown form field {name!r}; this endpoint takes {sorted(allowed | {IMAGES_FIELD})}",
                field=name,
            )
        if len(values) > 1:
            raise UploadError(f"form field {name!r} is given {len(values)} times; give it once", field=name)
    value = {name: values[0] for name, values in fields.items()}

    which = _text(value.get("model", "best"))
    if which not in ("best", "last"):
        raise UploadError(f"model: {which!r} is not a model; use 'best' or 'last'", field="model")
    threshold = None
    if "threshold" in value:
        threshold = _json(value["threshold"], "threshold")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0)
        ):
            raise UploadError(
                f"threshold: {value['threshold']!r} is not a number in [0, 1]", field="threshold"
            )
        threshold = float(threshold)
    thresholds = None
    if "thresholds" in value:
        thresholds = _json(value["thresholds"], "thresholds")
        if not isinstance(thresholds, dict):
            raise UploadError(
                f"thresholds: {value['thresholds'][:100]!r} is not a JSON object; "
                'send e.g. {"cat": 0.4, "dog": 0.6}',
                field="thresholds",
            )
    fmt = None
    if formats:
        fmt = _text(value.get("format", formats[0]))
        if fmt not in formats:
            raise UploadError(f"format: {fmt!r} is not one of {list(formats)}", field="format")
    return Options(which=which, threshold=threshold, thresholds=thresholds, format=fmt)


def _json(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise UploadError(f"{name}: {raw[:100]!r} is not valid JSON or a number", field=name) from exc


def _text(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        return decoded if isinstance(decoded, str) else raw
    return raw


# --- files and zips -----------------------------------------------------------------------------


def collect_images(parts: Sequence[Part], limits: Limits) -> list[InputFile]:
    """The images of a form: files in `images`, zips expanded. Raises UploadError."""
    stray = [p.field for p in parts if p.field != IMAGES_FIELD]
    if stray:
        raise UploadError(
            f"file field {stray[0]!r} is not expected; send every image (or .zip) in {IMAGES_FIELD!r}",
            field=stray[0],
        )
    files: list[InputFile] = []
    budget = ZipBudget(limits)
    for part in parts:
        name = part.filename or ""
        data = bytes(part.data)
        if not name and not data:
            continue  # what a browser sends for a file input left empty
        if is_zip(part):
            files.extend(expand_zip(name, data, budget))
        else:
            files.append(InputFile(name=name, data=data))
        if len(files) > limits.max_files:
            raise too_many(len(files), limits.max_files)
    if not files:
        raise UploadError(
            f"no images: send one or more image files (or a .zip of images) in the {IMAGES_FIELD!r} field",
            field=IMAGES_FIELD,
        )
    return files


def is_zip(part: Part) -> bool:
    name = (part.filename or "").lower()
    return name.endswith(".zip") or (part.data[:4] == b"PK\x03\x04" and not is_image_name(name))


class ZipBudget:
    """What all the zips of one request may still unpack: members and bytes."""

    def __init__(self, limits: Limits) -> None:
        self.files = limits.max_files
        self.bytes = limits.max_zip_bytes
        self.limits = limits

    def take(self, zip_name: str, size: int) -> None:
        self.files -= 1
        self.bytes -= size
        if self.files < 0:
            raise too_many(self.limits.max_files + 1, self.limits.max_files)
        if self.bytes < 0:
            raise UploadError(
                f"{IMAGES_FIELD}: {zip_name!r} unpacks to more than {self.limits.max_zip_bytes:,} bytes "
                "(zip bomb?); send smaller zips",
                status=413,
                field=IMAGES_FIELD,
                file=zip_name,
            )


def expand_zip(zip_name: str, data: bytes, budget: ZipBudget) -> list[InputFile]:
    """The images inside a zip, named `zip member path`; other members are skipped.

    Refuses absolute names and `..`; counts sizes as actually read, since headers can lie.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise UploadError(
            f"{IMAGES_FIELD}: {zip_name!r} is not a readable zip ({exc})", field=IMAGES_FIELD, file=zip_name
        ) from exc
    files: list[InputFile] = []
    with archive:
        for info in archive.infolist():
            member = info.filename
            unsafe_member(zip_name, member)
            if info.is_dir() or not is_image_name(member) or _is_junk(member):
                continue
            budget.take(zip_name, info.file_size)
            try:
                with archive.open(info) as handle:
                    content = handle.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise UploadError(
                    f"{IMAGES_FIELD}: {zip_name!r} member {member!r} cannot be read ({exc})",
                    field=IMAGES_FIELD,
                    file=f"{zip_name}/{member}",
                ) from exc
            if len(content) > info.file_size:  # the header lied about the size
                raise UploadError(
                    f"{IMAGES_FIELD}: {zip_name!r} member {member!r} is larger than its header says",
                    field=IMAGES_FIELD,
                    file=zip_name,
                )
            files.append(InputFile(name=member, data=content))
    return files


def unsafe_member(zip_name: str, member: str) -> None:
    normalised = member.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    absolute = normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":")
    if absolute or ".." in parts or "\x00" in member:
        raise UploadError(
            f"{IMAGES_FIELD}: {zip_name!r} holds the unsafe path {member[:200]!r} (absolute or with '..'); "
            "zip the images with relative paths",
            field=IMAGES_FIELD,
            file=zip_name,
        )
    if len(member.encode("utf-8")) > MAX_PATH_BYTES or any(
        len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts
    ):
        raise UploadError(
            f"{IMAGES_FIELD}: {zip_name!r} holds a path over the length limits ({MAX_NAME_BYTES} bytes per "
            f"name, {MAX_PATH_BYTES} per path): {member[:60]!r}…",
            field=IMAGES_FIELD,
            file=zip_name,
        )


def _is_junk(member: str) -> bool:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


# --- local files, for `manylabel predict` ------------------------------------------------------


def read_local_images(paths: Iterable[Path], limits: Limits) -> list[InputFile]:
    """Images from files, folders (recursive, names relative to the folder) and zips."""
    files: list[InputFile] = []
    budget = ZipBudget(limits)
    for path in map(Path, paths):
        if path.is_dir():
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = item.relative_to(path).as_posix()
                if is_image_name(item.name) and not _is_junk(rel):
                    files.append(InputFile(name=rel, data=item.read_bytes()))
        elif path.suffix.lower() == ".zip":
            files.extend(expand_zip(path.name, path.read_bytes(), budget))
        elif path.is_file():
            files.append(InputFile(name=path.name, data=path.read_bytes()))
        else:
            raise UploadError(f"{path} does not exist", field=IMAGES_FIELD, file=str(path))
        if len(files) > limits.max_files:
            raise too_many(len(files), limits.max_files)
    if not files:
        raise UploadError("no images found in the given paths", field=IMAGES_FIELD)
    return files
