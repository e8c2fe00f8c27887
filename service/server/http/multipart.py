"""Incremental multipart/form-data parsing of a predict request, in memory, within `Limits`.

Built on python-multipart's low-level parser (the one Starlette uses) so that every problem is an
`RequestError` with a 4xx status and a message a client can act on, and original file names are kept.
"""

from __future__ import annotations

import re

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

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


class MultipartReader:
    """Incremental multipart/form-data parser that keeps parts in memory, within `limits`."""

    def __init__(self, content_type: str, limits: Limits, reservation: Reservation | None = None) -> None:
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
        self.limits = limits
        self.reservation = reservation  # every byte kept is taken from the worker's budget
        self.received = 0
        self.parts: list[Part] = []
        self._files = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._ended = False
        self._parser = MultipartParser(
            boundary,
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

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limits.max_request_bytes:
            raise too_large(self.received, self.limits.max_request_bytes)
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise RequestError(
                f"malformed multipart body: {exc}; send a valid multipart/form-data form"
            ) from exc

    def finish(self) -> Form:
        try:
            self._parser.finalize()
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
