r"""Convert a PyTorch ResNet checkpoint (MoCo-v2 or torchvision) into a Flax teacher artifact.

Offline, one-time step; the only place outside tests that imports torch (jax_conventions.md §6.10):

  python launch/convert_teacher.py --src data/moco_v2_800ep_pretrain.pth.tar \
      --arch resnet50 --out teachers/moco_r50.npz

* The checkpoint is read with ``torch.load(..., weights_only=True)``. A file that needs arbitrary code
  to unpickle is refused, never loaded with ``weights_only=False``.
* ``--format auto`` picks MoCo-v2 when ``module.encoder_q.*`` keys exist (query encoder kept, MLP head
  dropped: the teacher feature is the 2048-d pooled output, fopro_kd_spec.md §6), else torchvision
  (``fc`` kept when present, so logits can be checked too).
* The output is ``--out`` (npz) plus ``--out``.json with the sha256; both appear atomically or not
  at all.
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from absl import app, flags
import numpy as np

from foprokd_jax.porting import resnet_weights
from foprokd_jax.porting.artifact import save_artifact, sha256_file

FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048}

_SRC = flags.DEFINE_string("src", None, "PyTorch checkpoint (.pth / .pth.tar) to convert.")
_OUT = flags.DEFINE_string("out", None,
                           "Output artifact path (.npz); a .npz.json sidecar is written beside it.")
_ARCH = flags.DEFINE_enum("arch", "resnet50", sorted(FEATURE_DIMS),
                          "ResNet architecture of the checkpoint.")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", *resnet_weights.FORMATS],
                            "Checkpoint layout; 'auto' detects MoCo-v2 by its module.encoder_q.* keys.")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be converted; the message says why and names the file."""


def _load_checkpoint(src: str):
    """``torch.load`` with ``weights_only=True``, turning failures into readable CheckpointErrors."""
    import torch  # pylint: disable=import-outside-toplevel

    if not os.path.isfile(src):
        raise FileNotFoundError(f"checkpoint not found: {src}")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch raises UnpicklingError both for disallowed globals and for non-pickle bytes.
        if "weights only load failed" in str(error).lower():
            raise CheckpointError(
                f"refusing to load {src}: unpickling it would need arbitrary Python code (it holds "
                "objects other than tensors and plain containers), which could execute anything. "
                "Only weights_only=True loading is allowed for safety. Re-save the state dict from a "
                "trusted environment with torch.save(model.state_dict(), ...).\n"
                f"torch said: {str(error).splitlines()[0]}") from error
        raise CheckpointError(f"{src} is not a readable torch checkpoint: {error}") from error
    except Exception as error:  # pylint: disable=broad-except
        # A truncated or foreign file surfaces as KeyError/RuntimeError/EOFError from torch internals.
        raise CheckpointError(
            f"{src} is not a readable torch checkpoint: {type(error).__name__}: {error}") from error


def _tensors_to_numpy(state_dict):
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    return out


def convert(src: str, out: str, arch: str = "resnet50", fmt: str = "auto",
            include_fc=None) -> dict:
    """Convert ``src`` into the artifact ``out``; return the sidecar metadata.

    Args:
      src: PyTorch checkpoint path.
      out: artifact path (.npz); ``out + '.json'`` is the sidecar.
      arch: 'resnet18' or 'resnet50'.
      fmt: 'auto', 'moco_v2' or 'torchvision'.
      include_fc: keep the torchvision classifier. None means: keep it for torchvision checkpoints
        that have one, never for MoCo-v2 (whose fc is the contrastive MLP, not a classifier).

    Raises:
      FileNotFoundError if ``src`` does not exist; CheckpointError if it cannot be read safely;
      ValueError if its keys or shapes do not match ``arch``. Nothing is written at ``out`` then.
    """
    if arch not in FEATURE_DIMS:
        raise ValueError(f"unsupported arch {arch!r}; expected one of {sorted(FEATURE_DIMS)}")
    if fmt not in ("auto", *resnet_weights.FORMATS):
        raise ValueError(f"unsupported format {fmt!r}")
    checkpoint = _load_checkpoint(src)

    try:
        detected = resnet_weights.detect_format(checkpoint)
        state_dict = resnet_weights.unwrap_state_dict(checkpoint)
    except ValueError as error:
        raise ValueError(f"{src}: {error}") from error
    fmt = detected if fmt == "auto" else fmt

    if fmt == "moco_v2":
        state_dict = resnet_weights.extract_moco_v2_encoder_q(state_dict)
        if include_fc:
            raise ValueError("MoCo-v2 has no classifier to keep (its fc is the projection MLP)")
        include_fc = False
    else:
        state_dict = resnet_weights.strip_data_parallel_prefix(state_dict)
        if include_fc is None:
            include_fc = "fc.weight" in state_dict

    try:
        variables = resnet_weights.torchvision_resnet_to_flax(
            _tensors_to_numpy(state_dict), arch, include_fc=include_fc)
    except ValueError as error:
        raise ValueError(f"cannot convert {src} as a {fmt} {arch} checkpoint:\n{error}") from error

    num_classes = (int(variables["params"]["fc"]["bias"].shape[0]) if include_fc else None)
    meta = {
        "arch": arch,
        "feature_dim": FEATURE_DIMS[arch],
        "feature_key": "pre_logits",
        "num_classes": num_classes,
        "source": os.path.abspath(src),
        "source_format": fmt,
        "source_sha256": sha256_file(src),
        "num_params": resnet_weights.count_parameters(variables),
    }
    return save_artifact(out, variables, meta)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    if not _SRC.value or not _OUT.value:
        raise app.UsageError("--src and --out are required")
    try:
        meta = convert(_SRC.value, _OUT.value, _ARCH.value, _FORMAT.value)
    except (FileNotFoundError, CheckpointError, ValueError) as error:
        print(f"convert_teacher: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {os.path.abspath(_OUT.value)} (+ .json sidecar)")
    print(f"  arch={meta['arch']} format={meta['source_format']} feature_dim={meta['feature_dim']}")
    print(f"  parameters={meta['num_params']:,}")
    print(f"  sha256={meta['sha256']}")
    return 0


if __name__ == "__main__":
    app.run(main)
