"""Image transforms: the reference "skin" train augmentation and the fixed resize.

docs/reference_semantics.md §8.2 (a), the recommended default, is the torchvision chain from FoPro-KD's
`data_preprocessing/data_loader.py` (the `isic-FL` path):

    Resize((224, 224))
    RandomChoice([RandomAffine(degrees=0, scale=(0.95, 1.20)),
                  RandomAffine(degrees=0, translate=(0.05, 0)),
                  RandomRotation(45)])
    ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.01)
    RandomHorizontalFlip()
    RandomVerticalFlip()

Here the resize is done once when the images are prepared (`resize_image`), so `train_augment`
starts from the already-resized uint8 HWC array. Every step is re-implemented with PIL the way
torchvision's PIL backend does it (torchvision 0.28 `transforms.py`, `functional.py`,
`_functional_pil.py`): affine/rotation with NEAREST resampling, fill 0, centre of rotation/scale at
(w/2, h/2), translation rounded to whole pixels; ColorJitter with the four factors drawn first and
applied in a random order through `ImageEnhance` and an HSV hue shift. The random numbers come from
a `np.random.Generator`, so the result is a pure function of (image, rng state): not bit-identical
to torch's RNG stream, but with the same distributions.

Normalisation (ImageNet mean/std) is not done here: it belongs to the model code (foprokd_jax/image_norm.py).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

AFFINE_SCALE_RANGE = (0.95, 1.20)
AFFINE_TRANSLATE = (0.05, 0.0)  # fraction of (width, height)
ROTATION_DEGREES = 45.0
BRIGHTNESS = CONTRAST = SATURATION = 0.25
HUE = 0.01


def resize_image(pil_image: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize((size, size))` on a PIL image: bilinear, antialiased, aspect ignored.

    PIL's `resize` filters over the whole footprint when it shrinks (that is what torchvision's
    `antialias=True` maps to for PIL input), so a 1024x1024 ISIC image is not aliased at 224.
    """
    if pil_image.mode != "RGB":
        pil_image = pil_image.convert("RGB")
    return pil_image.resize((size, size), resample=Image.BILINEAR)


def _inverse_affine_matrix(width: int, height: int, angle: float, translate: tuple, scale: float) -> list:
    """Output->input pixel map for PIL `Image.transform(AFFINE)`, as torchvision builds it.

    torchvision `_get_inverse_affine_matrix` without shear: M = T * C * R(angle) * S(scale) * C^-1
    with C the shift to the image centre (w/2, h/2); PIL needs M^-1.
    """
    cx, cy = width * 0.5, height * 0.5
    tx, ty = translate
    rot = math.radians(angle)
    a, b = math.cos(rot), -math.sin(rot)
    c, d = math.sin(rot), math.cos(rot)
    matrix = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty)
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty)
    matrix[2] += cx
    matrix[5] += cy
    return matrix


def _affine(img: Image.Image, translate: tuple, scale: float) -> Image.Image:
    # torchvision's F.affine calls `_get_inverse_affine_matrix(center, -angle, ...)` for PIL; the
    # angle is 0 for both RandomAffine instances here, so only translate and scale matter.
    matrix = _inverse_affine_matrix(img.width, img.height, 0.0, translate, scale)
    return img.transform(img.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=(0, 0, 0))


def random_affine_scale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomAffine(degrees=0, scale=(0.95, 1.20)): zoom about the centre."""
    scale = float(rng.uniform(*AFFINE_SCALE_RANGE))
    return _affine(img, (0, 0), scale)


def random_affine_translate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomAffine(degrees=0, translate=(0.05, 0)): horizontal shift of up to 5% of the width.

    torchvision draws tx ~ U(-0.05 w, 0.05 w) and rounds it to an int (Python `round`).
    """
    max_dx = AFFINE_TRANSLATE[0] * img.width
    max_dy = AFFINE_TRANSLATE[1] * img.height
    tx = int(round(float(rng.uniform(-max_dx, max_dx))))
    ty = int(round(float(rng.uniform(-max_dy, max_dy)))) if max_dy > 0 else 0
    return _affine(img, (tx, ty), 1.0)


def random_rotation(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RandomRotation(45): angle ~ U(-45, 45) degrees, NEAREST, no expand, corners filled with 0."""
    angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    return img.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=(0, 0, 0))


GEOMETRIC_CHOICES = (random_affine_scale, random_affine_translate, random_rotation)


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision `_functional_pil.adjust_hue`: shift the H channel of HSV with uint8 wrap-around.

    The shift is `np.int32(hue_factor * 255)` (truncation toward zero), so with hue=0.01 it is an
    integer in [-2, 2]; 0 leaves the image untouched apart from the HSV round trip.
    """
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        np_h += np.int32(hue_factor * 255).astype(np.uint8)
    h = Image.fromarray(np_h, "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """ColorJitter(0.25, 0.25, 0.25, 0.01) with torchvision's order of random draws.

    `ColorJitter.get_params` draws a random permutation of the four ops first, then the factors
    brightness/contrast/saturation ~ U(0.75, 1.25) and hue ~ U(-0.01, 0.01).
    """
    order = rng.permutation(4)
    brightness = float(rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS))
    contrast = float(rng.uniform(1 - CONTRAST, 1 + CONTRAST))
    saturation = float(rng.uniform(1 - SATURATION, 1 + SATURATION))
    hue = float(rng.uniform(-HUE, HUE))
    for op in order:
        if op == 0:
            img = ImageEnhance.Brightness(img).enhance(brightness)
        elif op == 1:
            img = ImageEnhance.Contrast(img).enhance(contrast)
        elif op == 2:
            img = ImageEnhance.Color(img).enhance(saturation)
        else:
            img = adjust_hue(img, hue)
    return img


def train_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "skin" train transform on an already-resized uint8 (H, W, 3) image.

    Deterministic given the generator's state; returns a new uint8 array of the same shape.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    img = Image.fromarray(image, "RGB")
    # RandomChoice picks one of the three geometric transforms uniformly.
    img = GEOMETRIC_CHOICES[int(rng.integers(len(GEOMETRIC_CHOICES)))](img, rng)
    img = color_jitter(img, rng)
    out = np.asarray(img)
    # RandomHorizontalFlip / RandomVerticalFlip, p = 0.5 each (torch: `torch.rand(1) < p`).
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1, :]
    return np.ascontiguousarray(out)


def eval_transform(image: np.ndarray) -> np.ndarray:
    """Test-time transform: identity (the Resize((224, 224)) already happened at prepare time)."""
    return image
