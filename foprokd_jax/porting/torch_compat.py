"""Importing torchvision next to the CPU-only torch wheel.

The PyPI torchvision 0.28.0 wheel is built against CUDA torch. Its compiled extension fails to load
against ``torch 2.13.0+cpu``, and the package then dies at import time while registering fake
kernels for ``torchvision::nms`` / ``torchvision::qnms``, because those operator schemas were never
declared. Declaring the two schemas ourselves lets the pure-Python parts (``models``, ``transforms``)
import; only the C++ ops stay unavailable, which weight porting does not need.

Only ``launch/convert_teacher.py`` and tests call this; training code never imports torch.
"""

import sys

# Signature shared by both detection ops in torchvision's C++ registration.
_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _forget_partial_torchvision_import():
    """A failed import leaves half-initialised torchvision modules behind; drop them so we can retry."""
    stale = [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]
    for name in stale:
        del sys.modules[name]


def import_torchvision():
    """Return the ``torchvision`` module, declaring the missing op schemas only if a plain import fails.

    Where a matching torchvision build is installed, the first import succeeds and nothing is touched.
    """
    try:
        import torchvision  # pylint: disable=import-outside-toplevel

        return torchvision
    except RuntimeError as error:
        # Any other import failure is a real problem that the schema trick cannot fix.
        if "torchvision::" not in str(error):
            raise

    import torch  # pylint: disable=import-outside-toplevel

    _forget_partial_torchvision_import()
    for op_name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op_name}", _NMS_SCHEMA)
        except RuntimeError:
            pass  # already declared, e.g. by an earlier call in this process
    import torchvision  # pylint: disable=import-outside-toplevel

    return torchvision
