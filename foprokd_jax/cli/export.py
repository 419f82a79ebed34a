r"""Export a trained student as a deployment file without model code: StableHLO or ONNX (foprokd_jax/deploy.py).

    python launch/export.py --workdir=workdirs/isic_ekd_f1 --format=onnx --out=student.onnx
    python launch/export.py --workdir=workdirs/isic_ekd_f1 --checkpoint=latest --format=stablehlo \
        --out=student.stablehlo
    python launch/export.py --artifact=student.npz --format=onnx --out=student.onnx

--workdir restores the run (its config.json, dataset metadata and teacher artifact must be present, as for
launch/evaluate.py) and its --checkpoint; --artifact takes a student already exported by
``launch/predict.py --export``. The graph maps uint8 RGB images (N, S, S, 3), any N, to softmax
probabilities; --out gets --out.json (preprocessing, class names, provenance, sha256) and --out.sha256
beside it. A bad request prints one ``error: ...`` line and exits 1 without writing anything.
Docs: docs/deployment.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

from foprokd_jax import xla_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run (launch/train.py workdir).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "With --workdir: 'best', 'latest' or a step number.")
_ARTIFACT = flags.DEFINE_string("artifact", None, "Instead of --workdir: an exported student (.npz).")
# A plain string (not an enum) so a wrong value gets the one-line error of every other bad input.
_FORMAT = flags.DEFINE_string("format", "onnx", "Deployment format: 'stablehlo' or 'onnx'.")
_OUT = flags.DEFINE_string("out", None, "File to write (e.g. student.onnx); .json and .sha256 go beside it.")
_OPSET = flags.DEFINE_integer("opset", 17, "ONNX opset (ONNX only).")


def export(workdir=None, artifact=None, fmt="onnx", out=None, checkpoint="best", opset=17) -> dict:
    """Everything the CLI does after flag parsing; returns the written sidecar."""
    from foprokd_jax import deploy

    deploy.check_format(fmt)
    if bool(workdir) == bool(artifact):
        raise ValueError("give exactly one of --workdir and --artifact")
    if not out:
        raise ValueError("--out is required (the file to write, e.g. student.onnx)")
    if workdir:
        return deploy.export_from_workdir(out, fmt, workdir, checkpoint, opset)
    return deploy.export_from_artifact(out, fmt, artifact, opset)


def main(argv):
    if len(argv) > 1:
        sys.stderr.write(f"error: unexpected arguments {argv[1:]}\n")
        sys.exit(1)
    xla_flags.apply_cpu_defaults()  # before any JAX computation (docs/performance.md)
    try:
        sidecar = export(_WORKDIR.value, _ARTIFACT.value, _FORMAT.value, _OUT.value, _CHECKPOINT.value, _OPSET.value)
    except (FileNotFoundError, ValueError, KeyError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"error: {message}\n")
        sys.exit(1)
    print(
        f"{sidecar['format']} student ({sidecar['student_arch']}, {len(sidecar['class_names'])} classes, "
        f"{sidecar['input']['image_size']} px) -> {_OUT.value} (sha256 {sidecar['sha256']})"
    )


def run():
    app.run(main)
