"""Every bad input gets a 4xx naming the field, file and value; never a 500; the service keeps serving."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest
from PIL import Image
from servekit import MODEL_NAME, image_bytes

pytestmark = pytest.mark.slow


def upload(*names_and_data: tuple[str, bytes]) -> list:
    return [("images", (name, data, "application/octet-stream")) for name, data in names_and_data]


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def assert_error(r: httpx.Response, status: int, *, field: str | None, contains: list[str]) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body, dict) and isinstance(body["error"], str), body
    assert body.get("field") == field, body
    for text in contains:
        assert text in body["error"], body
    assert "Traceback" not in r.text
    return body


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return image_bytes(7)


# --- image content ------------------------------------------------------------------------------


def test_non_image_file(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("notes.txt", b"hello, not an image")))
    body = assert_error(r, 400, field="images", contains=["'notes.txt'", "not a readable image"])
    assert body["file"] == "notes.txt"


def test_corrupt_image(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("noise.jpg", bytes(range(256)) * 40)))
    assert_error(r, 400, field="images", contains=["'noise.jpg'", "not a readable image"])


def test_truncated_jpeg(client: httpx.Client) -> None:
    whole = image_bytes(8, size=(400, 300))
    r = client.post("/predict", files=upload(("cut.jpg", whole[: len(whole) // 2])))
    assert_error(r, 400, field="images", contains=["'cut.jpg'", "truncated"])


def test_empty_file(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("empty.jpg", b"")))
    assert_error(r, 400, field="images", contains=["'empty.jpg'", "empty file"])


def test_decompression_bomb(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")  # 9 Mpx in a few kB; the limit is 4 Mpx
    r = client.post("/predict", files=upload(("bomb.png", buffer.getvalue())))
    assert_error(r, 413, field="images", contains=["'bomb.png'", "9,000,000 pixels", "4,000,000"])


# --- zips ---------------------------------------------------------------------------------------


def test_zip_with_parent_path(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("evil.zip", zip_of({"../../escape.jpg": jpeg}))))
    body = assert_error(r, 400, field="images", contains=["'evil.zip'", "unsafe path", "../../escape.jpg"])
    assert body["file"] == "evil.zip"


def test_zip_with_absolute_path(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("abs.zip", zip_of({"/etc/cron.d/x.jpg": jpeg}))))
    assert_error(r, 400, field="images", contains=["'abs.zip'", "unsafe path", "/etc/cron.d/x.jpg"])


def test_zip_bomb(client: httpx.Client) -> None:
    bomb = zip_of({"zeros.png": bytes(3 << 20)}, zipfile.ZIP_DEFLATED)  # 3 MiB > the 2 MiB limit, in ~3 kB
    assert len(bomb) < 100_000
    r = client.post("/predict", files=upload(("bomb.zip", bomb)))
    assert_error(r, 413, field="images", contains=["'bomb.zip'", "2,097,152 bytes"])


def test_corrupt_zip(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("broken.zip", b"PK\x03\x04" + b"\x00" * 50)))
    assert_error(r, 400, field="images", contains=["'broken.zip'", "not a readable zip"])


def test_zip_without_images(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("docs.zip", zip_of({"readme.txt": b"hi"}))))
    assert_error(r, 400, field="images", contains=["no images"])


# --- thresholds and model -----------------------------------------------------------------------


def test_unknown_label_in_thresholds(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post(
        "/predict", files=upload(("a.jpg", jpeg)), data={"thresholds": json.dumps({"horse": 0.3})}
    )
    assert_error(r, 400, field="thresholds", contains=["unknown label 'horse'", "'cat'"])


@pytest.mark.parametrize("value", ["NaN", "1.5", "-0.1", "Infinity", "true", "high"])
def test_bad_threshold(client: httpx.Client, jpeg: bytes, value: str) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"threshold": value})
    assert_error(r, 400, field="threshold", contains=["threshold", repr(value)[1:-1]])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"cat": NaN}', "outside [0, 1]"),
        ('{"cat": 2}', "outside [0, 1]"),
        ('{"cat": "0.4"}', "not a number"),
        ("[0.4]", "not a JSON object"),
        ("{cat: 0.4", "not valid JSON"),
    ],
)
def test_bad_thresholds(client: httpx.Client, jpeg: bytes, value: str, message: str) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"thresholds": value})
    assert_error(r, 400, field="thresholds", contains=[message])


def test_unknown_which(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"which": "newest"})
    assert_error(r, 400, field="which", contains=["'best' or 'last'"])


def test_a_model_that_is_not_served(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"model": "other-model:v1"})
    assert_error(r, 404, field="model", contains=["'other-model:v1'", "not in the BentoML model store"])


def test_the_served_model_by_name(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"model": MODEL_NAME})
    assert r.status_code == 200 and r.json()["model"] == MODEL_NAME


def test_unknown_field(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("a.jpg", jpeg)), data={"treshold": "0.5"})
    assert_error(r, 400, field="treshold", contains=["unknown form field 'treshold'"])


def test_images_in_the_wrong_field(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=[("image", ("a.jpg", jpeg, "image/jpeg"))])
    assert_error(r, 400, field="image", contains=["'image' is not expected", "'images'"])


def test_bad_bundle_format(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict_bundle", files=upload(("a.jpg", jpeg)), data={"format": "xlsx"})
    assert_error(r, 400, field="format", contains=["'xlsx'", "zip"])


# --- request shape and limits -------------------------------------------------------------------


def test_empty_form(client: httpx.Client) -> None:
    r = client.post("/predict", files=[("which", (None, b"best"))])  # a form with no file
    assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert_error(r, 400, field="images", contains=["no images"])


def test_no_body_at_all(client: httpx.Client) -> None:
    r = client.post("/predict")
    assert_error(r, 415, field=None, contains=["not multipart/form-data", "'images'"])


def test_json_body(client: httpx.Client) -> None:
    r = client.post("/predict", json={"images": ["/etc/passwd"]})
    assert_error(r, 415, field=None, contains=["'application/json'", "multipart/form-data"])


def test_too_many_files(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(*[(f"{i}.jpg", jpeg) for i in range(21)]))
    assert_error(r, 413, field="images", contains=["21+ files", "limit of 20"])


def test_too_many_files_in_a_zip(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", files=upload(("many.zip", zip_of({f"{i}.jpg": jpeg for i in range(25)}))))
    assert_error(r, 413, field="images", contains=["limit of 20"])


def test_too_many_bytes(client: httpx.Client) -> None:
    r = client.post("/predict", files=upload(("big.jpg", bytes(4 << 20))))
    assert_error(r, 413, field=None, contains=["over the limit of 3,145,728 bytes"])


def test_too_many_bytes_without_content_length(client: httpx.Client) -> None:
    def chunks():
        yield b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
        for _ in range(8):
            yield bytes(512 << 10)

    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    r = client.post("/predict", content=chunks(), headers=headers)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, field=None, contains=["over the limit of 3,145,728 bytes"])


# --- the three BentoML 1.4.39 traps (each answered 500 by BentoML itself) -------------------------


def test_malformed_multipart(client: httpx.Client) -> None:
    body = b"--xyz\r\nthis is not a part header\r\n\r\n"
    r = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 400, field=None, contains=["malformed multipart body"])


def test_truncated_multipart(client: httpx.Client, jpeg: bytes) -> None:
    body = b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n' + jpeg
    r = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(r, 400, field=None, contains=["malformed multipart body", "closing boundary"])


def test_multipart_without_boundary(client: httpx.Client, jpeg: bytes) -> None:
    r = client.post("/predict", content=jpeg, headers={"content-type": "multipart/form-data"})
    assert_error(r, 400, field=None, contains=["without a boundary"])


def test_file_name_over_250_characters(client: httpx.Client, jpeg: bytes) -> None:
    name = "x" * 296 + ".jpg"
    r = client.post("/predict", files=upload((name, jpeg)))
    body = assert_error(r, 400, field="images", contains=["300 bytes long", "limit of 255", "rename"])
    assert body["file"] == name[:255]


def test_file_name_of_250_characters_is_fine(client: httpx.Client, jpeg: bytes) -> None:
    name = "y" * 246 + ".jpg"
    r = client.post("/predict", files=upload((name, jpeg)))
    assert r.status_code == 200 and r.json()["images"][0]["filename"] == name


# --- and after all that ---------------------------------------------------------------------------


def test_still_serving_after_bad_input(client: httpx.Client, jpeg: bytes) -> None:
    for _ in range(3):
        client.post(
            "/predict", content=b"--a\r\nbroken", headers={"content-type": "multipart/form-data; boundary=a"}
        )
        client.post("/predict", files=upload(("x.jpg", b"garbage")))
    assert client.get("/readyz").status_code == 200
    r = client.post("/predict", files=upload(("ok.jpg", jpeg)))
    assert r.status_code == 200 and r.json()["count"] == 1
