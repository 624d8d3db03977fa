"""ONNX export with a parity check, and onnxruntime as a prediction backend (predict.py --export onnx,
predict.py --backend onnxruntime).

The exported graph is the network alone: normalised images (B, 3, S, S) float32 -> uvd (B, 21, 3), the batch axis
dynamic. Everything around it (TTA rotations and their inverse transforms, root depth, camera joints, files)
stays in the project, so both backends share it. The file sits beside its checkpoint (best.pt -> best.onnx) and
records the checkpoint's SHA-256, so a file exported from other weights is refused, not used.
"""
from pathlib import Path

import numpy as np
import torch

from core.common import UserError, atomic_write, file_sha256, usable_cores
from data.dataset import make_dataset
from core.geometry import DEPTH_RANGE_M

OPSET = 18
PARITY_IMAGES = 64         # real inputs compared at export
TOLERANCE_UV_PX = 0.01     # largest u, v difference kept (input pixels)
TOLERANCE_DEPTH_MM = 0.1   # largest root-relative depth difference kept (millimetres)
CHECKPOINT_KEY = "checkpoint_sha256"


def onnx_path(ckpt):
    """Where the ONNX file of a checkpoint lives: beside it, same stem."""
    return Path(ckpt).with_suffix(".onnx")


def uvd_differences(a, b):
    """Largest differences of two uvd arrays (N, 21, 3): (u, v in pixels, depth in mm)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    depth_mm = np.abs(a[..., 2] - b[..., 2]).max() * DEPTH_RANGE_M * 1e3
    return float(np.abs(a[..., :2] - b[..., :2]).max()), float(depth_mm)


def input_images(split, img_size):
    """Every image of ``split`` as the network input sees it: uint8 (N, 3, S, S), decoded from the files."""
    dataset = make_dataset(split, img_size)
    return torch.stack([dataset[i]["image"] for i in range(len(split))])


def within_tolerance(uv_px, depth_mm):
    return uv_px <= TOLERANCE_UV_PX and depth_mm <= TOLERANCE_DEPTH_MM


def export_graph(model, path, img_size):
    """Write ``model`` (eval mode, CPU) as ONNX to ``path``: input 'image' (batch, 3, S, S), output 'uvd'."""
    import onnx  # noqa: F401  (the exporter's dependency, checked here for a clear message)
    example = torch.zeros(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model.eval(), (example,), input_names=["image"], output_names=["uvd"],
                                dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True, verbose=False)
    program.save(str(path))


def stamp(path, digest):
    """Record the checkpoint's digest in the ONNX file's metadata."""
    import onnx
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = CHECKPOINT_KEY, digest
    onnx.save(graph, str(path))


class OnnxModel:
    """An exported network run by onnxruntime on the CPU, called like the PyTorch model: normalised images
    (B, 3, S, S) -> uvd (B, 21, 3), a tensor on the input's device."""

    def __init__(self, path, threads=None):
        import onnxruntime
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.log_severity_level = 3
        unreadable = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph,
                      ort_errors.NoSuchFile, ort_errors.NotImplemented)
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except unreadable as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{path} is not a readable ONNX model ({Path(path).stat().st_size} bytes; onnxruntime: "
                            f"{first.split(' failed:')[-1].strip()})") from None
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def check_io(self, path, img_size):
        """The graph takes 'image' (batch, 3, S, S) at the checkpoint's ``img_size`` and gives 'uvd' (batch, 21, 3),
        as export_graph writes it; else a UserError."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else None
        if (len(inputs) != 1 or inputs[0].name != "image" or shape[1:] != [3, img_size, img_size]
                or [o.name for o in outputs] != ["uvd"] or list(outputs[0].shape)[1:] != [21, 3]):
            found = ", ".join(f"{i.name} {i.shape}" for i in inputs) + " -> " + ", ".join(
                f"{o.name} {o.shape}" for o in outputs)
            raise UserError(f"{path} maps {found}, not image [batch, 3, {img_size}, {img_size}] -> uvd [batch, 21, 3] "
                            f"as exported from this checkpoint")

    def eval(self):
        return self

    def __call__(self, x):
        out = self.session.run(["uvd"], {"image": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def load_onnx(ckpt, threads=None, img_size=None):
    """The OnnxModel exported from ``ckpt`` (its input checked against ``img_size`` when given); a missing, broken
    or stale file is a UserError saying how to export it again."""
    path = onnx_path(ckpt)
    export_line = f"python predict.py --ckpt {ckpt} --export onnx"
    if not path.is_file():
        raise UserError(f"{path} not found: export the checkpoint first with `{export_line}`")
    try:
        model = OnnxModel(path, threads)
    except UserError as err:
        raise UserError(f"{err}: export it again with `{export_line}`") from None
    if img_size is not None:
        model.check_io(path, img_size)
    if model.metadata.get(CHECKPOINT_KEY) != file_sha256(ckpt):
        raise UserError(f"{path} was not exported from the current {ckpt} (its weights changed since): export it "
                        f"again with `{export_line}`")
    return model


def export_with_parity(model, ckpt, img_size, images, predict):
    """Export ``model`` beside ``ckpt`` and keep the file only if onnxruntime's joints on ``images`` (uint8
    (B, 3, S, S), real inputs) agree with PyTorch's: ``predict(net, images)`` -> uvd (B, 21, 3) for each backend.
    Returns (path, uv difference px, depth difference mm); a disagreement is a UserError and no file is kept."""
    path = onnx_path(ckpt)
    with atomic_write(path) as tmp:
        export_graph(model, tmp, img_size)
        stamp(tmp, file_sha256(ckpt))
        uv_px, depth_mm = uvd_differences(predict(model, images), predict(OnnxModel(tmp), images))
        if not within_tolerance(uv_px, depth_mm):
            raise UserError(f"onnxruntime disagrees with PyTorch on {len(images)} images of the split (u, v up to "
                            f"{uv_px:.2g} px, depth up to {depth_mm:.2g} mm; tolerance {TOLERANCE_UV_PX} px, "
                            f"{TOLERANCE_DEPTH_MM} mm): the file is not kept; predict with --backend torch")
    return path, uv_px, depth_mm
