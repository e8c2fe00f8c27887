"""`plain_form`, the shortcut for whole bodies in the shape HTTP clients send, against python-multipart.

The property: a body read with its length declared (kept whole, `plain_form` first) gives exactly
what the incremental python-multipart path gives, the same form or the same refusal, for what real
clients encode, for hand-made odd bodies and for thousands of random mutations of them.
"""

from __future__ import annotations

import random
import re

import httpx
import pytest

from service.errors import RequestError
from service.server.http.multipart import PLAIN_MAX_BYTES, MultipartReader, plain_form
from service.server.http.uploads import MAX_FIELD_BYTES, Form, Limits

LIMITS = Limits(max_files=4)
B = "bnd"
# python-multipart's own words, which depend on how the body was cut into chunks ("at 3", "got 110")
PARSER_DETAIL = re.compile(r"(?<=malformed multipart body: ).*(?=; send a valid)")


def encoded(files: list[tuple[str, bytes]], data: dict[str, str] | None = None) -> tuple[str, bytes]:
    """(content-type, body) as httpx, a real client, encodes the form."""
    request = httpx.Request(
        "POST", "http://x/predict", files=[("images", (n, b, "image/jpeg")) for n, b in files], data=data
    )
    return request.headers["content-type"], request.read()


def read(content_type: str, body: bytes, *, declared: bool, chunk: int = 7) -> Form | str:
    """The form, or the refusal as 'status message', through MultipartReader (python-multipart's
    description of a malformed body left out: it depends on the chunks it was given)."""
    try:
        reader = MultipartReader(content_type, LIMITS, declared=len(body) if declared else None)
        for i in range(0, len(body), chunk):
            reader.feed(body[i : i + chunk])
        return reader.finish()
    except RequestError as exc:
        return f"{exc.status} {PARSER_DETAIL.sub('…', str(exc))}"


def same_either_way(content_type: str, body: bytes) -> Form | str:
    whole = read(content_type, body, declared=True)
    assert whole == read(content_type, body, declared=False), body[:300]
    return whole


def test_what_httpx_encodes_takes_the_shortcut_with_python_multiparts_result() -> None:
    cases = [
        ([("a.jpg", b"\xff\xd8" + bytes(range(256)) * 40)], None),
        ([("a.jpg", b"1"), ("b.png", b""), ("c d;e.jpg", b"\r\n--not-it\r\n")], {"which": "last"}),
        ([("ünïcode €.jpg", b"x" * 1000)], {"threshold": "0.4", "thresholds": '{"cat": 0.3}'}),
    ]
    for files, data in cases:
        content_type, body = encoded(files, data)
        boundary = content_type.split("boundary=")[1].encode()
        form = plain_form(body, boundary, LIMITS)
        assert form is not None, body[:200]  # the shortcut is taken
        assert form == read(content_type, body, declared=False)  # and gives what python-multipart gives
        assert [(p.filename, bytes(p.data)) for p in form.files] == files
        assert form.fields == {k: [v] for k, v in (data or {}).items()}


def plain(*parts: bytes, epilogue: bytes = b"\r\n") -> bytes:
    return b"".join(b"--" + B.encode() + b"\r\n" + p + b"\r\n" for p in parts) + b"--bnd--" + epilogue


DISPOSITION = b'Content-Disposition: form-data; name="images"; filename="a.jpg"'
FILE = DISPOSITION + b"\r\nContent-Type: image/jpeg\r\n\r\nJPEG"
ODD = [
    plain(FILE),
    plain(FILE, epilogue=b""),
    plain(FILE, epilogue=b"\r\ntrailing words"),
    b"preamble\r\n" + plain(FILE),
    b"\r\n" + plain(FILE),
    plain(FILE)[:-9],  # no closing boundary
    plain(FILE).replace(b"--bnd--", b"--bnd"),
    plain(FILE.replace(b"JPEG", b"J\r\n--bndX\r\n--bnd \r\nPEG")),  # boundary-like lines inside the data
    plain(FILE.replace(b"JPEG", b"J\r\n--bnd--x")),
    plain(FILE.replace(b"Content-Disposition", b"content-DISPOSITION")),
    plain(FILE.replace(b": form-data", b":form-data")),
    plain(FILE.replace(b": form-data", b":\tform-data")),
    plain(FILE.replace(b": form-data", b":   form-data")),
    plain(FILE.replace(b"; filename", b";filename")),
    plain(FILE.replace(b'"a.jpg"', b"a.jpg")),
    plain(FILE.replace(b'"a.jpg"', b'"a\\".jpg"')),
    plain(FILE.replace(b'"a.jpg"', b'"C:\\\\x\\\\a.jpg"')),
    plain(FILE.replace(b'"a.jpg"', b'"' + b"n" * 1100 + b'"')),
    plain(FILE.replace(b'filename="a.jpg"', b'filename="a.jpg"; name="b"')),
    plain(FILE.replace(b"Content-Type", b"Content-Disposition")),
    plain(FILE.replace(b"Content-Type: image/jpeg", b"X Y: z")),
    plain(FILE.replace(b"Content-Type: image/jpeg", b" folded: z")),
    plain(FILE.replace(b"Content-Type: image/jpeg", b"X: a\rb")),
    plain(FILE.replace(b"Content-Type: image/jpeg", b"X: " + b"v" * 5000)),
    plain(FILE.replace(b"Content-Type: image/jpeg", b"\r\n".join(b"X-%d: v" % i for i in range(9)))),
    plain(FILE.replace(b'name="images"; filename="a.jpg"', b'filename="a.jpg"')),
    plain(b"\r\nno headers"),
    plain(b'Content-Disposition: form-data; name="which"\r\n\r\n' + b"v" * (MAX_FIELD_BYTES + 1)),
    plain(b'Content-Disposition: form-data; name="which"\r\n\r\nlast', FILE),
    plain(*[FILE] * 5),  # over max_files
    plain(*[b'Content-Disposition: form-data; name="f%d"\r\n\r\nv' % i for i in range(LIMITS.max_parts + 1)]),
]


@pytest.mark.parametrize("body", ODD, ids=range(len(ODD)))
def test_odd_bodies_give_the_same_form_or_refusal_whole_or_incrementally(body: bytes) -> None:
    same_either_way(f"multipart/form-data; boundary={B}", body)


def test_random_mutations_give_the_same_form_or_refusal_whole_or_incrementally() -> None:
    rng = random.Random(14)
    seeds = ODD[:2] + ODD[-2:] + [encoded([("a.jpg", b"JPEG" * 20), ("b.jpg", b"x")], {"which": "best"})[1]]
    alphabet = b'\r\n-":; =bndaxyz'
    outcomes = set()
    for _ in range(3000):
        body = bytearray(rng.choice(seeds))
        boundary = B if body.startswith(b"--bnd\r\n") else body[2 : body.index(b"\r\n")].decode()
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(body))
            if rng.random() < 0.5:
                new = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
                body[at : at + rng.randint(0, 3)] = new
            else:
                del body[at : at + rng.randint(1, 8)]
        result = same_either_way(f"multipart/form-data; boundary={boundary}", bytes(body))
        outcomes.add("form" if isinstance(result, Form) else result.split(" ")[0])
        if plain_form(bytes(body), boundary.encode(), LIMITS) is not None:
            outcomes.add("shortcut")
    assert outcomes == {"form", "shortcut", "400", "413"}  # the mutations reached every answer


def test_a_body_over_the_shortcuts_size_is_refused_while_it_streams_in() -> None:
    content_type = f"multipart/form-data; boundary={B}"
    many = plain(*[FILE] * 5) + b"x" * PLAIN_MAX_BYTES  # over max_files in its first bytes
    reader = MultipartReader(content_type, LIMITS, declared=len(many))
    with pytest.raises(RequestError, match="over the limit of 4") as exc:
        reader.feed(many[:4096])  # not kept whole: python-multipart refuses before the rest arrives
    assert exc.value.status == 413


def test_a_boundary_over_python_multiparts_limit_is_a_400_naming_it() -> None:
    with pytest.raises(RequestError, match="boundary of 300 bytes is over the limit of 256") as exc:
        MultipartReader(f"multipart/form-data; boundary={'b' * 300}", LIMITS, declared=100)
    assert exc.value.status == 400
