"""Peer: LitServe with its batching on (`LitAPI(max_batch_size=..., batch_timeout=...)`).

LitServe parses the form in its API-server process and hands it to one inference worker process
(its default, `workers_per_device=1`), which decodes each request, batches, infers and answers.
`batch_timeout` is 1 ms (or --max-latency-ms when larger): at 0 LitServe's batch loop polls its queue
without ever blocking and burns a core; 1 ms is its polling step, and measured here it beat 5 ms at
every concurrency (92 vs 73 images/s at concurrency 1, 256 px).

    python benchmarks/peers/litserve_server.py --model-dir DIR --port P [--max-latency-ms 1]
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time and
# parses the form only when it is the Request class itself (a string makes it pickle the whole request).

import litserve as ls
import numpy as np
from common import Model, parse_args  # benchmarks/peers/ is sys.path[0]
from starlette.requests import Request


class ManyLabelAPI(ls.LitAPI):
    def __init__(self, model_dir, intra_op_threads: int, precision: str = "fp32", **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_dir = model_dir
        self.intra_op_threads = intra_op_threads
        self.precision = precision

    def setup(self, device: str) -> None:
        self.model = Model(self.model_dir, self.intra_op_threads, self.precision)

    def decode_request(self, request: Request) -> tuple[str, np.ndarray]:
        upload = request["images"]  # the parsed form: a starlette UploadFile
        return upload.filename or "image", self.model.decode(upload.file.read())

    def batch(self, inputs: list[tuple[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
        return [name for name, _ in inputs], np.stack([arr for _, arr in inputs])

    def predict(self, x: tuple[list[str], np.ndarray]) -> tuple[list[str], np.ndarray]:
        names, batch = x
        return names, self.model.infer(batch)

    def unbatch(self, output: tuple[list[str], np.ndarray]) -> list[tuple[str, np.ndarray]]:
        names, scores = output
        return list(zip(names, scores, strict=True))

    def encode_response(self, output: tuple[str, np.ndarray]) -> dict:
        name, scores = output
        return {"count": 1, "images": [self.model.answer(name, scores)]}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    api = ManyLabelAPI(
        args.model_dir,
        args.intra_op_threads,
        args.precision,
        max_batch_size=args.max_batch_size,
        batch_timeout=max(args.max_latency_ms, 1.0) / 1000.0,
    )
    server = ls.LitServer(api, accelerator="cpu", timeout=60)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
