"""ONNX stand-ins for the pose models of the SteadyDancer workflows, built with the `onnx` package.

ComfyUI-WanAnimatePreprocess (`models/onnx_models.py`) reads each model's first input and output by position, takes
the input resolution from the input's shape (`[2:]`), and post-processes:

- YOLOv10m (`yolov10m.onnx`, Ultralytics export): input `images` float32 [1, 3, 640, 640], output `output0`
  float32 [1, 300, 6] (x1, y1, x2, y2, score, class);
- ViTPose-H whole-body (`vitpose_h_wholebody_model.onnx` with its weights in `vitpose_h_wholebody_data.bin` beside
  it, ONNX external data): input `input_0` float32 [batch, 3, 256, 192], output `output_0` float32
  [batch, 133, 64, 48] (heatmaps of the 133 COCO-WholeBody keypoints).

The stand-ins have those names and shapes and files of the real sizes. The weights are one large random initializer
that the graph reads at run time (a Gather whose index depends on the input, so ONNX Runtime can neither fold it
away nor skip loading it). The outputs are a fixed person: one detection in the middle of the frame (YOLO) and
heatmaps with a Gaussian peak at each of the 133 keypoints of a standing figure (ViTPose), plus a strided
convolution of the input times zero; the node pack's pose retargeting needs a plausible skeleton (random heatmaps
give zero-length bones and NaN ratios). The pose pipeline runs end to end at a fraction of the real cost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin_weights import Tensor, _Writer  # noqa: E402

VITPOSE_MODEL = "vitpose_h_wholebody_model.onnx"
VITPOSE_DATA = "vitpose_h_wholebody_data.bin"
YOLO_MODEL = "yolov10m.onnx"
OPSET = 17


def _index_from(helper, x: str, prefix: str) -> list:
    """Nodes computing an int64 index [0] that depends on input `x` (ReduceMax(x) * 0, cast)."""
    return [
        helper.make_node("ReduceMax", [x], [f"{prefix}_max"], keepdims=0),
        helper.make_node("Mul", [f"{prefix}_max", f"{prefix}_zero"], [f"{prefix}_z"]),
        helper.make_node("Cast", [f"{prefix}_z"], [f"{prefix}_i"], to=7),
        helper.make_node("Unsqueeze", [f"{prefix}_i", f"{prefix}_axes"], [f"{prefix}_idx"]),
    ]


def _index_inits(numpy_helper, prefix: str) -> list:
    return [numpy_helper.from_array(np.array(0.0, np.float32), f"{prefix}_zero"),
            numpy_helper.from_array(np.array([0], np.int64), f"{prefix}_axes")]


def skeleton() -> np.ndarray:
    """(133, 2) keypoints (x, y) of a standing person in ViTPose's 48x64 heatmap grid: COCO-WholeBody order (17 body,
    6 feet, 68 face, 21 left hand, 21 right hand)."""
    body = [(24, 10), (26, 9), (22, 9), (28, 10), (20, 10), (30, 18), (18, 18), (33, 27), (15, 27), (35, 35),
            (13, 35), (28, 36), (20, 36), (29, 47), (19, 47), (29, 58), (19, 58)]
    feet = [(31, 61), (32, 60), (28, 60), (17, 61), (16, 60), (20, 60)]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    face = [(24 + 3.0 * np.cos(a), 10 + 4.0 * np.sin(a)) for a in angles]

    def hand(x0: float, y0: float, side: int) -> list[tuple[float, float]]:
        points = [(x0, y0)]
        for finger in range(5):
            for joint in range(1, 5):
                points.append((x0 + side * (finger - 2) * 0.8, y0 + joint * 0.9))
        return points

    return np.array(body + feet + face + hand(36, 37, 1) + hand(12, 37, -1), np.float32)


def heatmaps() -> np.ndarray:
    """[1, 133, 64, 48] Gaussian peaks (sigma 1.5) at the skeleton's keypoints, never exactly zero."""
    ys, xs = np.mgrid[0:64, 0:48].astype(np.float32)
    points = skeleton()
    maps = np.exp(-((xs[None] - points[:, 0, None, None]) ** 2 + (ys[None] - points[:, 1, None, None]) ** 2) / 4.5)
    return (maps[None] * 0.9 + 1e-4).astype(np.float32)


def vitpose(folder: Path, data_bytes: int, device: str = "cpu") -> dict[str, int]:
    """`vitpose_h_wholebody_model.onnx` + `vitpose_h_wholebody_data.bin` (`data_bytes` of float32 weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    count = data_bytes // 4
    writer = _Writer(folder / VITPOSE_DATA, device, seed=7)
    writer.tensor(Tensor("weights", (count,), "F32"))
    writer.close()
    weights = TensorProto(name="weights", data_type=TensorProto.FLOAT, dims=[count],
                          data_location=TensorProto.EXTERNAL)
    for key, value in (("location", VITPOSE_DATA), ("offset", "0"), ("length", str(count * 4))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    rng = np.random.default_rng(7)
    conv_w = numpy_helper.from_array((rng.standard_normal((133, 3, 4, 4)) * 0.05).astype(np.float32), "head_w")
    conv_b = numpy_helper.from_array(np.zeros(133, np.float32), "head_b")
    nodes = [
        helper.make_node("Conv", ["input_0", "head_w", "head_b"], ["conv"], strides=[4, 4], kernel_shape=[4, 4]),
        *_index_from(helper, "input_0", "w"),
        helper.make_node("Gather", ["weights", "w_idx"], ["w_one"], axis=0),
        helper.make_node("Add", ["conv", "w_one"], ["live"]),
        helper.make_node("Mul", ["live", "w_zero"], ["nil"]),
        helper.make_node("Add", ["nil", "template"], ["output_0"]),
    ]
    graph = helper.make_graph(
        nodes, "vitpose_h_wholebody_standin",
        [helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["batch", 3, 256, 192])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 133, 64, 48])],
        [weights, conv_w, conv_b, numpy_helper.from_array(heatmaps(), "template"), *_index_inits(numpy_helper, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="standin")
    model.ir_version = 8
    onnx.save_model(model, folder / VITPOSE_MODEL)
    onnx.checker.check_model(str(folder / VITPOSE_MODEL))  # by path: the external data is found beside it
    return {VITPOSE_MODEL: (folder / VITPOSE_MODEL).stat().st_size, VITPOSE_DATA: (folder / VITPOSE_DATA).stat().st_size}


def yolo(folder: Path, total_bytes: int) -> dict[str, int]:
    """`yolov10m.onnx`, weights embedded, about `total_bytes` in all."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    count = max(total_bytes // 4 - 4096, 16)
    weights = numpy_helper.from_array((rng.standard_normal(count) * 0.02).astype(np.float32), "weights")
    # One person in the middle of the 640x640 input, score 0.9, class 0; the other 299 rows empty.
    detections = np.zeros((1, 300, 6), np.float32)
    detections[0, 0] = [160, 40, 480, 600, 0.9, 0]
    nodes = [
        *_index_from(helper, "images", "w"),
        helper.make_node("Gather", ["weights", "w_idx"], ["w_one"], axis=0),
        helper.make_node("Mul", ["w_one", "w_zero"], ["w_nil"]),
        helper.make_node("Add", ["detections", "w_nil"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolov10m_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 300, 6])],
        [weights, numpy_helper.from_array(detections, "detections"), *_index_inits(numpy_helper, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="standin")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, folder / YOLO_MODEL)
    return {YOLO_MODEL: (folder / YOLO_MODEL).stat().st_size}
