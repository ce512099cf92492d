"""The servers gloro-serve is compared with, on the same model file and the same request body.

- `plain`: a plain FastAPI endpoint, as one would write it in an afternoon: a pydantic body, the
  image decoded with Pillow, onnxruntime run once per request on the event loop, no batching.
- `litserve`: LitServe (PyPI `litserve`) with its dynamic batching.

Both answer `{"predictions": [{"label", "certified", "radius"}]}` for `{"instances": [{"b64"}]}` on
POST /predict, use the server's onnxruntime session settings, and listen on 127.0.0.1 only.

    python -m bench.peers plain --model DIR --port 8101
    python -m bench.peers litserve --model DIR --port 8102 --max-batch-size 64 --batch-timeout 0.005
"""

from __future__ import annotations

import argparse
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel


class Model:
    """model.onnx and its manifest: decode one base64 image, run a batch, shape the answer."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        from server.backends.ort import session_options

        manifest = json.loads((folder / "gloro.json").read_text())
        self.mode = manifest["input"]["color_mode"]
        self.epsilon = float(manifest["epsilon"])
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=session_options(0),
                                            providers=["CPUExecutionProvider"])

    def decode(self, b64: str) -> np.ndarray:
        """float32 [C, H, W] in [0, 1]."""
        image = Image.open(io.BytesIO(base64.b64decode(b64))).convert(self.mode)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        label, radius = self.session.run(["label", "radius"], {"input": batch})
        return label, radius

    def answer(self, label: int, radius: float) -> dict[str, Any]:
        return {"label": label, "certified": radius > self.epsilon, "radius": radius}


class Instance(BaseModel):
    b64: str


class Body(BaseModel):
    """The plain endpoint's request, parsed by FastAPI (module level: FastAPI resolves the annotation)."""

    instances: list[Instance]


def plain_app(folder: Path) -> Any:
    from fastapi import FastAPI

    model = Model(folder)
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: Body) -> dict[str, Any]:
        batch = np.stack([model.decode(i.b64) for i in body.instances])
        label, radius = model.run(batch)
        return {"predictions": [model.answer(int(lab), float(r)) for lab, r in zip(label, radius)]}

    return app


def _lit_api_class() -> type:
    """LitServe's API class, defined at module level (LitServe pickles it into its worker process)."""
    import litserve as ls

    class GloroAPI(ls.LitAPI):
        def __init__(self, folder: Path, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.folder = folder

        def setup(self, device: str) -> None:
            self.model = Model(self.folder)

        # No annotations on these two: LitServe reads them to choose the request and response types.
        def decode_request(self, request):  # noqa: ANN001, ANN201
            return self.model.decode(request["instances"][0]["b64"])

        def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
            return np.stack(inputs)

        def predict(self, x: np.ndarray) -> list[tuple[int, float]]:
            label, radius = self.model.run(x if x.ndim == 4 else x[None])
            return list(zip(label.tolist(), radius.tolist()))

        def unbatch(self, output: list[tuple[int, float]]) -> list[tuple[int, float]]:
            return output

        def encode_response(self, output):  # noqa: ANN001, ANN201
            if isinstance(output, list):  # an unbatched call (max_batch_size 1)
                output = output[0]
            return {"predictions": [self.model.answer(*output)]}

    GloroAPI.__qualname__ = GloroAPI.__name__ = "GloroAPI"
    GloroAPI.__module__ = __name__
    return GloroAPI


def __getattr__(name: str) -> Any:  # `GloroAPI` resolves lazily, so importing this needs no litserve
    if name == "GloroAPI":
        globals()["GloroAPI"] = cls = _lit_api_class()
        return cls
    raise AttributeError(name)


def litserve_server(folder: Path, max_batch_size: int, batch_timeout: float) -> Any:
    import litserve as ls

    api = __getattr__("GloroAPI")(folder, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    return ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("kind", choices=["plain", "litserve"])
    parser.add_argument("--model", type=Path, required=True, help="a model version folder (model.onnx, gloro.json)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.005)
    args = parser.parse_args(argv)
    if args.kind == "plain":
        import uvicorn

        uvicorn.run(plain_app(args.model), host="127.0.0.1", port=args.port, log_level="warning",
                    access_log=False)
    else:
        server = litserve_server(args.model, args.max_batch_size, args.batch_timeout)
        server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False,
                   num_api_servers=1)


if __name__ == "__main__":
    main()
