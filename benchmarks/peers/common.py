"""What every peer server shares, so that only the serving framework differs between them.

The same fused ONNX model (a manylabel model folder: `manifest.json` + `best.onnx`, or
`best.int8.onnx` with `--precision int8`), the same
`service.preprocess.load_image`, the same onnxruntime session options as manylabel
(`service.server.runtime.session_options`: intra-op threads = cores, pool threads spinning only
while a call runs), the same request
(multipart POST /predict, one file in field `images`) and an answer of the same shape.
Runs in the peers' environment (benchmarks/requirements-peers.txt) with the repository on sys.path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from service.manifest import Manifest  # noqa: E402
from service.preprocess import load_image  # noqa: E402
from service.server.runtime import session_options  # noqa: E402


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model-dir", type=Path, required=True, help="folder with manifest.json and best.onnx")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-batch-size", type=int, default=16, help="manylabel's CPU default")
    ap.add_argument("--max-latency-ms", type=float, default=0.0, help="longest wait for batch-mates")
    ap.add_argument("--intra-op-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--precision", choices=("fp32", "int8"), default="fp32", help="best.onnx or best.int8.onnx"
    )
    return ap.parse_args()


class Model:
    """decode (bytes -> (S, S, 3) uint8), infer ((N, S, S, 3) -> (N, L)), answer (a JSON-able dict)."""

    def __init__(self, model_dir: Path, intra_op_threads: int, precision: str = "fp32") -> None:
        self.manifest = Manifest.read(model_dir, verify=False)
        self.spec = self.manifest.preprocessing
        self.labels = self.manifest.labels
        best = self.manifest.models["best"]
        self.thresholds = np.asarray(best.thresholds, dtype=np.float64)
        self.session = ort.InferenceSession(
            str(model_dir / best.file_for(precision)),  # the graph manylabel serves at that precision
            session_options(intra_op_threads),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = self.spec.input_name
        self.output_name = self.manifest.output_name
        self.infer(np.zeros((1, self.spec.image_size, self.spec.image_size, 3), np.uint8))  # warm-up

    def decode(self, data: bytes) -> np.ndarray:
        return load_image(data, self.spec)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        (scores,) = self.session.run([self.output_name], {self.input_name: batch})
        return scores

    def answer(self, filename: str, scores: np.ndarray) -> dict:
        above = np.asarray(scores, dtype=np.float64) >= self.thresholds
        return {
            "filename": filename,
            "scores": {label: float(s) for label, s in zip(self.labels, scores, strict=True)},
            "predicted": [label for label, a in zip(self.labels, above, strict=True) if a],
        }
