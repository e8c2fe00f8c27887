"""Peer: the FastAPI + onnxruntime endpoint many write by hand (no batching; one image per run).

A sync `def` endpoint, so FastAPI runs decode + inference in its thread pool, one request per thread.

    python benchmarks/peers/fastapi_server.py --model-dir DIR --port P
"""

from __future__ import annotations

from common import Model, parse_args  # benchmarks/peers/ is sys.path[0]
from fastapi import FastAPI, File, UploadFile


def make_app(model: Model) -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    def predict(images: list[UploadFile] = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        upload = images[0]
        scores = model.infer(model.decode(upload.file.read())[None])[0]
        return {"count": 1, "images": [model.answer(upload.filename or "image", scores)]}

    return app


def main() -> None:
    import uvicorn

    args = parse_args(__doc__.splitlines()[0])
    app = make_app(Model(args.model_dir, args.intra_op_threads, args.precision))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
