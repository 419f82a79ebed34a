"""ImageNet pixel normalisation, the one definition shared by the steps, the Fourier prompt and analyses.

torchvision, MoCo-v2 and DINOv2 all expect ImageNet mean/std normalisation (docs/reference_semantics.md §6).
The input pipeline ships uint8 images; normalisation happens on device, so the Fourier prompt can undo and redo it.
"""

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x01: jnp.ndarray) -> jnp.ndarray:
    """[0, 1] pixels -> ImageNet-normalised, float32 (torchvision `Normalize`)."""
    mean, std = jnp.asarray(IMAGENET_MEAN, jnp.float32), jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x01.astype(jnp.float32) - mean) / std


def unnormalize(x: jnp.ndarray) -> jnp.ndarray:
    """ImageNet-normalised -> [0, 1] pixels, in float32 whatever the input dtype."""
    mean, std = jnp.asarray(IMAGENET_MEAN, jnp.float32), jnp.asarray(IMAGENET_STD, jnp.float32)
    return x.astype(jnp.float32) * std + mean


def normalize_uint8(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """uint8 NHWC in [0, 255] -> ImageNet-normalised (torchvision `ToTensor` + `Normalize`)."""
    return normalize(images.astype(jnp.float32) / 255.0).astype(dtype)
