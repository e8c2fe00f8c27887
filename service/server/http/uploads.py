"""Reading uploads safely: the parsed form, zips of images within budgets, local files for the CLI.

BentoML 1.4.39 answers 500 to a malformed multipart body, to one without a boundary and to a file
name over ~250 characters (it becomes a temp-file suffix), loses the original file names and
`json.loads` every form field. `service.server.http.multipart.MultipartReader` therefore parses the predict
requests (for `predict_routes.PredictRoutes`), in memory and within these limits, into a `Form`.
Nothing here turns an uploaded name into a path.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ArchiveError, RequestError
from service.files import MAX_NAME_BYTES, TooManyMembers, check_member, is_junk, open_zip, read_member
from service.preprocess import is_image_name
from service.server.http.budget import ByteBudget, Reservation

logger = logging.getLogger(__name__)

IMAGES_FIELD = "images"
MAX_FIELD_BYTES = 64 << 10  # a non-file form field (a JSON thresholds object is far smaller)
MAX_FIELDS = 8  # non-file form fields a request may send (/predict_bundle takes 5)


@dataclass(frozen=True)
class Limits:
    max_files: int = 1000
    max_request_bytes: int = 256 << 20
    max_zip_bytes: int = 256 << 20
    inflight: ByteBudget | None = None  # the worker's budget of request bytes, shared by requests
    body_timeout_s: float = 30.0  # a client silent this long mid-body is answered 408

    @property
    def max_zip_members(self) -> int:
        """Members of every kind the zips of one request may declare (folders, non-images too)."""
        return 2 * self.max_files + 16

    @property
    def max_parts(self) -> int:
        return self.max_files + MAX_FIELDS


@dataclass(frozen=True)
class InputFile:
    """One image to score: the name the client gave (for display only) and its bytes."""

    name: str
    data: bytes | bytearray  # the upload's own buffer: never copied


@dataclass
class Part:
    field: str
    filename: str | None
    data: bytearray | bytes = field(default_factory=bytearray)  # bytes when read whole (plain_form)


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
        raise RequestError(
            f"{field}: file name {name[:40]!r}… is {len(name.encode('utf-8'))} bytes long, over the "
            f"limit of {MAX_NAME_BYTES}; rename the file",
            field=field,
            file=name[:MAX_NAME_BYTES],
        )


def too_large(size: int, limit: int) -> RequestError:
    return RequestError(
        f"request body of {size:,}+ bytes is over the limit of {limit:,} bytes; split it into several "
        "requests",
        status=413,
    )


def too_many(count: int, limit: int) -> RequestError:
    return RequestError(
        f"{IMAGES_FIELD}: {count}+ files is over the limit of {limit} per request; split them into "
        "several requests",
        status=413,
        field=IMAGES_FIELD,
    )


# --- files and zips -----------------------------------------------------------------------------


def collect_images(
    parts: Sequence[Part], limits: Limits, reservation: Reservation | None = None
) -> list[InputFile]:
    """The images of a form: files in `images`, zips expanded (their bytes reserved from the worker's
    budget through `reservation`). Raises RequestError."""
    stray = [p.field for p in parts if p.field != IMAGES_FIELD]
    if stray:
        raise RequestError(
            f"file field {stray[0]!r} is not expected; send every image (or .zip) in {IMAGES_FIELD!r}",
            field=stray[0],
        )
    files: list[InputFile] = []
    budget = ZipBudget(limits, reservation)
    for part in parts:
        name = part.filename or ""
        data = part.data
        if not name and not data:
            continue  # what a browser sends for a file input left empty
        if is_zip(part):
            files.extend(expand_zip(name, data, budget))
        else:
            files.append(InputFile(name=name, data=data))
        if len(files) > limits.max_files:
            raise too_many(len(files), limits.max_files)
    if not files:
        raise RequestError(
            f"no images: send one or more image files (or a .zip of images) in the {IMAGES_FIELD!r} field",
            field=IMAGES_FIELD,
        )
    return files


def is_zip(part: Part) -> bool:
    name = (part.filename or "").lower()
    return name.endswith(".zip") or (part.data[:4] == b"PK\x03\x04" and not is_image_name(name))


class ZipBudget:
    """What all the zips of one request may still unpack: members and bytes."""

    def __init__(self, limits: Limits, reservation: Reservation | None = None) -> None:
        self.files = limits.max_files
        self.bytes = limits.max_zip_bytes
        self.members = limits.max_zip_members
        self.limits = limits
        self.reservation = reservation

    def count_member(self, zip_name: str) -> None:
        self.members -= 1
        if self.members < 0:
            raise RequestError(
                f"{IMAGES_FIELD}: the zips hold more than {self.limits.max_zip_members:,} members in all "
                "(folders and other files count too); send fewer or smaller zips",
                status=413,
                field=IMAGES_FIELD,
                file=zip_name,
            )

    def take(self, zip_name: str, size: int, files: int = 1) -> None:
        """Take `files` images of `size` bytes in all, as their headers declare."""
        self.files -= files
        self.bytes -= size
        if self.files < 0:
            raise too_many(self.limits.max_files + 1, self.limits.max_files)
        if self.bytes < 0:
            raise RequestError(
                f"{IMAGES_FIELD}: {zip_name!r} unpacks to more than {self.limits.max_zip_bytes:,} bytes "
                "(zip bomb?); send smaller zips",
                status=413,
                field=IMAGES_FIELD,
                file=zip_name,
            )
        if self.reservation is not None:
            self.reservation.take(size)


def expand_zip(zip_name: str, data: bytes | bytearray, budget: ZipBudget) -> list[InputFile]:
    """The images inside a zip, named `zip member path`; other members are counted, then skipped.

    The member count is read from the zip's end record before its central directory is parsed;
    unsafe names, encrypted or damaged members refuse the request (400 naming the zip and member);
    sizes are counted as actually read, since headers can lie.
    """

    def refuse(exc: ArchiveError, member: str | None = None) -> RequestError:
        file = zip_name if member is None else f"{zip_name}/{member}"
        status = 413 if isinstance(exc, TooManyMembers) else 400
        return RequestError(f"{IMAGES_FIELD}: {exc}", field=IMAGES_FIELD, file=file, status=status)

    try:
        archive = open_zip(io.BytesIO(data), zip_name, max_members=budget.members)
    except ArchiveError as exc:
        raise refuse(exc) from None
    with archive:
        planned = []  # every member is checked and the sizes summed before one byte is unpacked
        for info in archive.infolist():
            budget.count_member(zip_name)
            try:
                check_member(zip_name, info)
            except ArchiveError as exc:
                raise refuse(exc) from None
            if not (info.is_dir() or not is_image_name(info.filename) or is_junk(info.filename)):
                planned.append(info)
        budget.take(zip_name, sum(info.file_size for info in planned), len(planned))
        files: list[InputFile] = []
        for info in planned:
            try:
                content = read_member(archive, info, zip_name)
            except ArchiveError as exc:
                raise refuse(exc, info.filename) from None
            files.append(InputFile(name=info.filename, data=content))
    return files






# --- local files, for `manylabel predict` ------------------------------------------------------


def read_local_images(paths: Iterable[Path], limits: Limits) -> list[InputFile]:
    """Images from files, folders (recursive, names relative to the folder) and zips."""
    files: list[InputFile] = []
    budget = ZipBudget(limits)
    for path in map(Path, paths):
        if path.is_dir():
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = item.relative_to(path).as_posix()
                if is_image_name(item.name) and not is_junk(rel):
                    files.append(InputFile(name=rel, data=item.read_bytes()))
        elif path.suffix.lower() == ".zip":
            files.extend(expand_zip(path.name, path.read_bytes(), budget))
        elif path.is_file():
            files.append(InputFile(name=path.name, data=path.read_bytes()))
        else:
            raise RequestError(f"{path} does not exist", field=IMAGES_FIELD, file=str(path))
        if len(files) > limits.max_files:
            raise too_many(len(files), limits.max_files)
    if not files:
        raise RequestError("no images found in the given paths", field=IMAGES_FIELD)
    return files
