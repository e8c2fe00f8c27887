"""Peer: PyTriton (the Triton Inference Server shipped in `nvidia-pytriton`) with its dynamic batcher.

Triton speaks KServe v2 (tensors), not multipart uploads, so a thin FastAPI front in the same
process takes the same multipart POST /predict as every other target, decodes the image in its
thread pool and sends the uint8 tensor to Triton's HTTP endpoint with PyTriton's asyncio client;
Triton's dynamic batcher groups concurrent requests into one call of the bound Python function
(one model instance, PyTriton's default), which runs onnxruntime.

    python benchmarks/peers/pytriton_server.py --model-dir DIR --port P
"""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

import numpy as np
from common import Model, parse_args  # benchmarks/peers/ is sys.path[0]
from fastapi import FastAPI, File, UploadFile
from starlette.concurrency import run_in_threadpool

MODEL_NAME = "manylabel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_triton(model: Model, max_batch_size: int, max_latency_ms: float):
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"scores": model.infer(image)}

    size = model.spec.image_size
    http_port = free_port()
    config = TritonConfig(
        http_address="127.0.0.1", http_port=http_port, grpc_port=free_port(), metrics_port=free_port()
    )
    triton = Triton(config=config)
    triton.bind(
        model_name=MODEL_NAME,
        infer_func=infer,
        inputs=[Tensor(name="image", dtype=np.uint8, shape=(size, size, 3))],
        outputs=[Tensor(name="scores", dtype=np.float32, shape=(len(model.labels),))],
        config=ModelConfig(
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=int(max_latency_ms * 1000)),
        ),
        strict=False,
    )
    triton.run()
    return triton, f"http://127.0.0.1:{http_port}"


def make_app(model: Model, triton_url: str) -> FastAPI:
    from pytriton.client import AsyncioModelClient

    clients: dict[str, AsyncioModelClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        clients["triton"] = AsyncioModelClient(triton_url, MODEL_NAME, inference_timeout_s=60)
        yield
        await clients["triton"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    async def predict(images: list[UploadFile] = File(...)) -> dict:  # noqa: B008 - FastAPI's idiom
        upload = images[0]
        array = await run_in_threadpool(model.decode, await upload.read())
        result = await clients["triton"].infer_sample(image=array)
        return {"count": 1, "images": [model.answer(upload.filename or "image", result["scores"])]}

    return app


def main() -> None:
    import uvicorn

    args = parse_args(__doc__.splitlines()[0])
    model = Model(args.model_dir, args.intra_op_threads, args.precision)
    triton, url = start_triton(model, args.max_batch_size, args.max_latency_ms)
    try:
        uvicorn.run(
            make_app(model, url), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
        )
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
