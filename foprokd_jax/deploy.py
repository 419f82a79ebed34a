"""A trained student as a model-code-free deployment file: StableHLO (``jax.export``) or ONNX.

    deploy.export_student_file(out, fmt, module, variables, meta)   # InferenceStudent + variables + meta
    deploy.export_from_artifact(out, fmt, "student.npz")           # an exported student (export.py)
    deploy.export_from_workdir(out, fmt, workdir, checkpoint)      # a trained run
    run = deploy.load_stablehlo(out)      # callable: uint8 (N, S, S, 3) -> probabilities (N, C)

Both formats hold the same graph: uint8 NHWC images (any batch size) -> ImageNet mean/std normalisation
-> the student in inference mode (BatchNorm running statistics) -> softmax probabilities (float32), with
the weights baked in as constants.

* StableHLO: ``jax.export.export(jax.jit(f))`` with a symbolic batch dimension, written with
  ``Exported.serialize()``. Plain JAX runs it without this package: ``jax.export.deserialize(bytes).call(x)``.
  The serialization format is versioned by JAX (https://docs.jax.dev/en/latest/export/export.html).
* ONNX: torch's exporter run on the student's torchvision/timm twin carrying the trained weights
  (``porting/torch_twin.py``; needs torch at export time only). The students reproduce those reference
  models to <= 1e-5 (tests/test_students.py), and tests/test_deploy.py checks every architecture's ONNX
  file in onnxruntime against this module's JAX probabilities. docs/deployment.md says why this path and
  not a JAX->ONNX tracer (jax2onnx's orbax-checkpoint pin conflicts with the project's).

Every file gets ``<file>.json`` (the metadata below plus the file's sha256) and ``<file>.sha256``
(``sha256sum -c`` format); ONNX files also carry the metadata in ``metadata_props``. docs/deployment.md
shows how to run both in onnxruntime / plain JAX.
"""

import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from foprokd_jax import export, image_norm

FORMATS = ("stablehlo", "onnx")
SUFFIXES = {"stablehlo": ".stablehlo", "onnx": ".onnx"}
ONNX_OPSET = 17  # the newest opset torch's TorchScript-based exporter writes fully
INPUT_NAME, OUTPUT_NAME = "images", "probs"
METADATA_KEY = "foprokd_jax"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def probabilities_fn(module, variables) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """uint8 (N, S, S, 3) -> float32 softmax probabilities, `module` an export.InferenceStudent."""

    def probs(images):
        return jax.nn.softmax(module.apply(variables, images).astype(jnp.float32), axis=-1)

    return probs


def deployment_metadata(meta: dict, fmt: str) -> dict:
    """What a deployment needs besides the graph: preprocessing, class names, provenance."""
    size = int(meta["image_size"])
    student = meta["module"]["kwargs"]
    return {
        "format": fmt,
        "student_arch": student.get("trunk"),
        "class_names": list(meta["class_names"]),
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NHWC",
            "shape": ["batch", size, size, 3],
            "image_size": size,
            "value_range": [0, 255],
            "preprocessing": meta.get("input"),
        },
        # Applied inside the graph: feed raw uint8 RGB of the right size, never normalised floats.
        "normalisation": {
            "mean": list(image_norm.IMAGENET_MEAN),
            "std": list(image_norm.IMAGENET_STD),
            "scale": "x / 255, then (x - mean) / std per channel",
            "inside_graph": True,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", len(meta["class_names"])],
            "meaning": "softmax class probabilities, in class_names order",
        },
        "method": meta.get("method"),
        "dataset": meta.get("dataset"),
        "checkpoint_step": meta.get("checkpoint_step"),
        "source": meta.get("source"),
        "student_artifact_sha256": meta.get("sha256"),
        "jax_version": jax.__version__,
    }


def _symbolic_input(size: int) -> jax.ShapeDtypeStruct:
    (batch,) = jax.export.symbolic_shape("batch")
    return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)


def stablehlo_bytes(fn: Callable, size: int) -> bytes:
    """Serialized ``jax.export`` of `fn` for uint8 (batch, size, size, 3) inputs, batch symbolic."""
    return bytes(jax.export.export(jax.jit(fn))(_symbolic_input(size)).serialize())


# ------------------------------------------------------------------------------------------------- ONNX
def onnx_model(module, variables: dict, size: int, metadata: dict, opset: int = ONNX_OPSET):
    """An ``onnx.ModelProto`` (uint8 (batch, size, size, 3) -> probabilities) of the student's torch twin."""
    import onnx

    from foprokd_jax.porting import torch_twin  # torch only at export time

    data = torch_twin.onnx_bytes(module.student, variables, size, opset, INPUT_NAME, OUTPUT_NAME)
    model = onnx.load_from_string(data)
    model.graph.name = "foprokd_student"
    del model.metadata_props[:]
    for key, value in onnx_metadata_props(metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def onnx_metadata_props(metadata: dict) -> Dict[str, str]:
    """String key/values for ONNX ``metadata_props`` (onnxruntime: ``get_modelmeta().custom_metadata_map``)."""
    return {
        METADATA_KEY: json.dumps(metadata, sort_keys=True),
        "class_names": json.dumps(metadata["class_names"]),
        "image_size": str(metadata["input"]["image_size"]),
        "mean": json.dumps(metadata["normalisation"]["mean"]),
        "std": json.dumps(metadata["normalisation"]["std"]),
    }


# ------------------------------------------------------------------------------------------- writing
def _write_atomically(path: str, files: Dict[str, bytes]) -> None:
    """Writes {path + suffix: bytes} via temporary files in the destination folder; the model goes last."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temps = {}
    try:
        for target, data in files.items():
            handle, temp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
            with os.fdopen(handle, "wb") as f:
                f.write(data)
            temps[target] = temp
        for target in sorted(temps, key=lambda t: t == path):  # sidecars first, the model file last
            os.replace(temps[target], target)
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)


def export_student_file(out: str, fmt: str, module, variables: dict, meta: dict, opset: int = ONNX_OPSET) -> dict:
    """Writes `out` in `fmt` plus `out`.json and `out`.sha256; returns the sidecar (metadata + sha256)."""
    check_format(fmt)
    size = int(meta["image_size"])
    fn = probabilities_fn(module, variables)
    metadata = deployment_metadata(meta, fmt)
    if fmt == "stablehlo":
        data = stablehlo_bytes(fn, size)
    else:
        data = onnx_model(module, variables, size, metadata, opset).SerializeToString()
        metadata["onnx_opset"] = opset
    digest = hashlib.sha256(data).hexdigest()
    sidecar = dict(metadata, sha256=digest, file=os.path.basename(out))
    _write_atomically(
        out,
        {
            out: data,
            out + ".json": json.dumps(sidecar, indent=1, sort_keys=True).encode(),
            out + ".sha256": f"{digest}  {os.path.basename(out)}\n".encode(),
        },
    )
    return sidecar


def export_from_artifact(out: str, fmt: str, artifact_path: str, opset: int = ONNX_OPSET) -> dict:
    """Exports an exported student (.npz from ``launch/predict.py --export``) as `fmt`."""
    check_format(fmt)
    module, variables, meta = export.load_student_with_meta(artifact_path)
    return export_student_file(out, fmt, module, variables, meta, opset)


def export_from_workdir(out: str, fmt: str, workdir: str, checkpoint: str = "best", opset: int = ONNX_OPSET) -> dict:
    """Exports the student of a trained run (its `checkpoint`: 'best', 'latest' or a step) as `fmt`."""
    check_format(fmt)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir} does not exist")
    from foprokd_jax import evaluation

    run = evaluation.restore_run(workdir, checkpoint)
    variables, meta = export.student_variables_and_meta(run)
    module = export.InferenceStudent(export.build_module(meta["module"]), meta.get("logits_key"))
    return export_student_file(out, fmt, module, jax.tree.map(jnp.asarray, variables), meta, opset)


# ------------------------------------------------------------------------------------------- loading
def read_verified(path: str) -> Tuple[bytes, dict]:
    """(file bytes, sidecar) of an export, refusing a file whose sha256 differs from its sidecar's."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported model {path} not found")
    if not os.path.isfile(path + ".json"):
        raise FileNotFoundError(f"{path}.json (the export's metadata sidecar) not found")
    with open(path, "rb") as f:
        data = f.read()
    with open(path + ".json", encoding="utf-8") as f:
        sidecar = json.load(f)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.get("sha256"):
        raise ValueError(
            f"{path} has sha256 {digest}, its sidecar says {sidecar.get('sha256')}: the file was modified or truncated"
        )
    return data, sidecar


def load_stablehlo(path: str) -> Tuple[Callable[[Any], Any], dict]:
    """(callable uint8 (N, S, S, 3) -> probs (N, C), sidecar) of a verified StableHLO export."""
    data, sidecar = read_verified(path)
    exported = jax.export.deserialize(bytearray(data))
    return exported.call, sidecar


def onnx_session(path: str):
    """(onnxruntime InferenceSession on CPU, sidecar) of a verified ONNX export."""
    import onnxruntime

    data, sidecar = read_verified(path)
    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]), sidecar


def onnx_probs(session, images: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images, np.uint8)})[0]
