"""Incremental multipart/form-data parsing of a predict request, in memory, within `Limits`.

Built on python-multipart's low-level parser (the one Starlette uses) so that every problem is an
`RequestError` with a 4xx status and a message a client can act on, and original file names are kept.

One shortcut of our own (`plain_form`): python-multipart walks part headers a byte at a time in
Python and parses each Content-Disposition with a general RFC 2231 parser, 70-85 us for a one-image
request on the 2-core benchmark machine, ~0.2 ms in the server (where inference leaves the caches
cold): 2 % of a 256-px image's whole service time. A body of at most `PLAIN_MAX_BYTES` whose length
is declared is kept whole and split with `bytes.find` when it has the shape every HTTP client sends;
anything else (and every error) goes through python-multipart as before.
"""

from __future__ import annotations

import re

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header

from service.errors import RequestError
from service.server.http.budget import Reservation
from service.server.http.uploads import (
    IMAGES_FIELD,
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    Form,
    Limits,
    Part,
    check_name,
    decode_text,
    too_large,
    too_many,
)

# `name=` and `filename=` as parameters of a Content-Disposition value, counted after quoted values
# are blanked out (a file may well be called "a; name=b.jpg").
_PARAM = {p: re.compile(rb";\s*" + p + rb"\s*=", re.IGNORECASE) for p in (b"name", b"filename")}
_QUOTED = re.compile(rb'"(?:\\.|[^"\\])*"')

# `plain_form`'s scope: bodies this small are kept whole (the request's bytes are reserved up front);
# body and parts coexist until the form is read: 2 MiB at most per request, beyond the budget's count.
PLAIN_MAX_BYTES = 1 << 20
PLAIN_MAX_HEADERS = 8  # per part; python-multipart's limit (DEFAULT_MAX_HEADER_COUNT) is 8 too
PLAIN_MAX_HEADER_BYTES = 4096  # per header line; python-multipart's: 4096 + 128
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The Content-Disposition that browsers, curl, requests and httpx write; no quotes, backslashes or
# line breaks inside the values, so that python-multipart would read the same name and file name.
_PLAIN_DISPOSITION = re.compile(rb'form-data; name="([^"\\\r\n]*)"(?:; filename="([^"\\\r\n]*)")?')


class MultipartReader:
    """Incremental multipart/form-data parser that keeps parts in memory, within `limits`."""

    def __init__(
        self,
        content_type: str,
        limits: Limits,
        reservation: Reservation | None = None,
        *,
        declared: int | None = None,
    ) -> None:
        """`declared`: the body's Content-Length, when given (a small body is kept whole, see
        `plain_form`)."""
        media, params = parse_options_header(content_type)
        if media != b"multipart/form-data":
            raise RequestError(
                f"content-type {content_type or '(none)'!r} is not multipart/form-data: send the images "
                f"as files in the {IMAGES_FIELD!r} field of a multipart form",
                status=415,
            )
        boundary = params.get(b"boundary")
        if not boundary:
            raise RequestError(
                "multipart/form-data without a boundary parameter: let your HTTP client build the "
                "content-type header (do not set it by hand)"
            )
        if len(boundary) > MAX_BOUNDARY_LENGTH:
            raise RequestError(
                f"multipart boundary of {len(boundary)} bytes is over the limit of {MAX_BOUNDARY_LENGTH}; "
                "let your HTTP client choose it"
            )
        self.limits = limits
        self.boundary = bytes(boundary)
        self.reservation = reservation  # every byte kept is taken from the worker's budget
        self.received = 0
        self.parts: list[Part] = []
        self._files = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._ended = False
        self._whole: list[bytes] | None = [] if declared is not None and declared <= PLAIN_MAX_BYTES else None
        self._parser: MultipartParser | None = None  # made when needed: plain_form needs none

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_request_bytes:
            raise too_large(self.received, self.limits.max_request_bytes)
        if self._whole is not None:
            self._whole.append(chunk)
            return
        self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        parser = self._parser or self._new_parser()
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise RequestError(
                f"malformed multipart body: {exc}; send a valid multipart/form-data form"
            ) from exc

    def finish(self) -> Form:
        if self._whole is not None:
            body, self._whole = b"".join(self._whole), None
            form = plain_form(body, self.boundary, self.limits)
            if form is not None:
                return form
            self._write(body)  # not the plain shape: python-multipart reads it, errors and all
        try:
            (self._parser or self._new_parser()).finalize()
        except FormParserError as exc:  # pragma: no cover - finalize rarely raises
            raise RequestError(f"malformed multipart body: {exc}") from exc
        if not self._ended:
            raise RequestError(
                "malformed multipart body: it ends before the closing boundary (truncated upload?)"
            )
        form = Form(files=[], fields={})
        for part in self.parts:
            if part.filename is None:
                form.fields.setdefault(part.field, []).append(decode_text(part.data))
            else:
                form.files.append(part)
        return form

    # python-multipart callbacks

    def _new_parser(self) -> MultipartParser:
        self._parser = MultipartParser(
            self.boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )
        return self._parser

    def _on_part_begin(self) -> None:
        self._disposition = None
        if len(self.parts) >= self.limits.max_parts:
            raise RequestError(
                f"the form has more than {self.limits.max_parts} parts ({self.limits.max_files} files and "
                f"{MAX_FIELDS} fields at most); split it into several requests",
                status=413,
            )
        self.parts.append(Part(field="", filename=None))

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            if self._disposition is not None:
                raise RequestError("malformed multipart body: a part has two Content-Disposition headers")
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = self._disposition or b""
        bare = _QUOTED.sub(b'""', disposition)
        for param in (b"name", b"filename"):
            if len(_PARAM[param].findall(bare)) > 1:
                raise RequestError(
                    f"malformed multipart body: a part's Content-Disposition gives {param.decode()}= twice"
                )
        _, options = parse_options_header(disposition)
        part = self.parts[-1]
        if b"name" not in options:
            raise RequestError('malformed multipart body: a part has no Content-Disposition "name"')
        part.field = decode_text(options[b"name"])
        if b"filename" in options:
            part.filename = decode_text(options[b"filename"])
            check_name(part.filename, field=part.field)
            self._files += 1
            if self._files > self.limits.max_files:
                raise too_many(self._files, self.limits.max_files)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        if self.reservation is not None:
            self.reservation.take(end - start)
        part.data.extend(data[start:end])
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise RequestError(
                f"form field {part.field!r} is over {MAX_FIELD_BYTES} bytes; is it a file sent without a "
                "filename?",
                field=part.field,
            )

    def _on_end(self) -> None:
        self._ended = True


def plain_form(body: bytes, boundary: bytes, limits: Limits) -> Form | None:
    """The form of a whole body in the shape HTTP clients send, within `limits`; None otherwise.

    Gives what `MultipartReader` gives through python-multipart for the same body, or None whenever
    it might differ or there is anything to refuse: then python-multipart reads the body and the error
    names the problem. The shape: `--boundary` CRLF, then parts of `Name: value` header lines, a blank
    line and the data up to CRLF `--boundary`, followed by CRLF and the next part or by `--` and at
    most a CRLF; exactly one Content-Disposition per part, matching `_PLAIN_DISPOSITION`.
    """
    delimiter = b"\r\n--" + boundary
    if not body.startswith(delimiter[2:] + b"\r\n"):
        return None
    form = Form(files=[], fields={})
    pos, parts = len(delimiter), 0
    while True:
        head_end = body.find(b"\r\n\r\n", pos)
        end = body.find(delimiter, head_end + 4) if head_end >= 0 else -1
        if end < 0:
            return None
        parts += 1
        disposition = _plain_disposition(body[pos:head_end].split(b"\r\n"))
        if disposition is None or parts > limits.max_parts:
            return None
        field = decode_text(disposition[1])
        data = body[head_end + 4 : end]
        if disposition[2] is None:
            if len(data) > MAX_FIELD_BYTES:
                return None
            form.fields.setdefault(field, []).append(decode_text(data))
        else:
            filename = decode_text(disposition[2])
            if len(form.files) >= limits.max_files:
                return None  # refused on python-multipart's path, with its message
            try:
                check_name(filename, field=field)
            except RequestError:
                return None
            form.files.append(Part(field=field, filename=filename, data=data))
        pos = end + len(delimiter) + 2
        after = body[pos - 2 : pos]
        if after == b"--":
            return form if body[pos:] in (b"", b"\r\n") else None
        if after != b"\r\n":
            return None


def _plain_disposition(lines: list[bytes]) -> re.Match[bytes] | None:
    """A part's one plain Content-Disposition among well-formed header lines, else None.

    Well-formed as python-multipart reads them: a token, a colon, a value without CR, at most
    `PLAIN_MAX_HEADERS` lines of at most `PLAIN_MAX_HEADER_BYTES` (its limits are a little higher).
    """
    if len(lines) > PLAIN_MAX_HEADERS:
        return None
    found = None
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or len(line) > PLAIN_MAX_HEADER_BYTES or b"\r" in value or not _TOKEN.fullmatch(name):
            return None
        if name.lower() == b"content-disposition":
            if found is not None:
                return None
            found = _PLAIN_DISPOSITION.fullmatch(value.lstrip(b" "))
            if found is None:
                return None
    return found
