"""A small contract-conformant GloRo model (docs/artifact.md), built with onnx.helper and numpy.

The network is one affine layer f(x) = W flatten(x) + b, so its margins f_i - f_j are exactly
||w_i - w_j||-Lipschitz: K_ij = safety * ||w_i - w_j||, radius = min_{j != label} (f_label - f_j) / K_label,j.
`fit_linear` gives weights that classify MNIST reasonably (ridge regression), so tests can check
real answers without torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SAFETY = 1.001
BIG = 1e30


def k_matrix(weights: np.ndarray) -> np.ndarray:
    """K_ij = safety * ||w_i - w_j||_2 for the rows of weights [m, d], in float64."""
    w = weights.astype(np.float64)
    return SAFETY * np.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)


def reference(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits, label, radius in float64, for checking the ONNX graph and the server."""
    logits = x.reshape(len(x), -1).astype(np.float64) @ weights.T.astype(np.float64) + bias
    label = logits.argmax(axis=1)
    k = k_matrix(weights)
    margins = logits[np.arange(len(x)), label][:, None] - logits
    ratio = margins / np.where(k[label] > 0, k[label], 1.0)
    ratio[np.arange(len(x)), label] = np.inf
    return logits, label, ratio.min(axis=1)


def build_onnx(weights: np.ndarray, bias: np.ndarray, shape: tuple[int, int, int]) -> onnx.ModelProto:
    m = weights.shape[0]
    k = k_matrix(weights)
    k_inv = np.where(np.eye(m, dtype=bool), 0.0, 1.0 / np.where(k > 0, k, 1.0)).astype(np.float32)
    mask = np.where(np.eye(m, dtype=bool), BIG, 0.0).astype(np.float32)
    inits = [
        numpy_helper.from_array(weights.astype(np.float32), "W"),
        numpy_helper.from_array(bias.astype(np.float32), "b"),
        numpy_helper.from_array(k_inv, "K_inv"),
        numpy_helper.from_array(mask, "diag_mask"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        helper.make_node("Unsqueeze", ["label", "axis1"], ["label_col"]),
        helper.make_node("GatherElements", ["logits", "label_col"], ["top"], axis=1),
        helper.make_node("Sub", ["top", "logits"], ["margins"]),
        helper.make_node("Gather", ["K_inv", "label"], ["k_inv_rows"], axis=0),
        helper.make_node("Gather", ["diag_mask", "label"], ["mask_rows"], axis=0),
        helper.make_node("Mul", ["margins", "k_inv_rows"], ["ratios"]),
        helper.make_node("Add", ["ratios", "mask_rows"], ["masked"]),
        helper.make_node("ReduceMin", ["masked"], ["radius"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_gloro",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *shape])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", m]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("radius", TensorProto.FLOAT, ["N"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def random_weights(shape: tuple[int, int, int], classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    return rng.normal(0, 1 / np.sqrt(d), (classes, d)), rng.normal(0, 0.1, classes)


def fit_linear(images: np.ndarray, labels: np.ndarray, classes: int = 10, ridge: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression of one-hot labels on pixels in [0, 1]: weights [m, d], bias [m]."""
    x = images.reshape(len(images), -1).astype(np.float64)
    x1 = np.hstack([x, np.ones((len(x), 1))])
    y = np.eye(classes)[labels]
    solution = np.linalg.solve(x1.T @ x1 + ridge * np.eye(x1.shape[1]), x1.T @ y)
    return solution[:-1].T, solution[-1]


def write_model(
    root: Path,
    name: str = "tiny",
    version: str = "1",
    *,
    shape: tuple[int, int, int] = (1, 28, 28),
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    epsilon: float = 0.3,
) -> Path:
    """Write <root>/<name>/<version>/{model.onnx, gloro.json}; returns the version folder."""
    if weights is None or bias is None:
        weights, bias = random_weights(shape)
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    data = build_onnx(weights, bias, shape).SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "format_version": 1,
        "name": name,
        "version": version,
        "input": {"shape": list(shape), "color_mode": "L" if shape[0] == 1 else "RGB", "range": [0.0, 1.0]},
        "classes": [str(i) for i in range(weights.shape[0])],
        "epsilon": epsilon,
        "train_epsilon": epsilon,
        "architecture": "linear",
        "bound": {"method": "exact: affine layer", "safety_factor": SAFETY, "body_lipschitz": 1.0, "layers": []},
        "onnx": {"file": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "opset": OPSET},
        "metrics": {"dataset": "none", "split": "test", "n": 0},
        "provenance": {"epochs": 0, "date": "2026-01-01", "code_version": "tests", "train_command": "tiny_model.py"},
    }
    (folder / "gloro.json").write_text(json.dumps(manifest, indent=2))
    return folder
