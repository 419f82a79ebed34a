"""The "skin" train augmentation as a batched, jit-compiled JAX function (issue 18: augmentation on the device).

The same transform as the host version (`data/augment.py`: the torchvision chain of FoPro-KD's
`data_preprocessing/data_loader.py`, docs/reference_semantics.md §8.2 (a)): one of {RandomAffine(scale=(0.95,
1.20)), RandomAffine(translate=(0.05, 0)), RandomRotation(45)} chosen uniformly, then ColorJitter(0.25, 0.25,
0.25, 0.01) with its four ops in a random order, then horizontal and vertical flips with p = 0.5, on uint8
(N, H, W, 3) images. `augment_batch` is pure and vmapped over the batch, so inside the data-parallel step each
device augments its own shard (`methods/device_augmentation.py`).

Randomness: example `i` of the global batch at step `t` uses `example_key(seed, t, i)`, so the result depends
on (seed, step, global example index) only, not on how the batch is split over devices or hosts, and a
resumed run draws the same parameters. The stream is not the host version's numpy stream (neither is torch's);
the distributions are the same (tests/test_device_augment.py compares moments over many draws).

Each operation follows what torchvision's PIL backend does through Pillow's C code (re-implemented here, the
arithmetic in float32 as Pillow does it, except where Pillow uses double):
- geometry: `Image.transform(AFFINE, NEAREST)` / `Image.rotate(NEAREST)`: the centre (x + 0.5, y + 0.5) of an
  output pixel goes through the inverse matrix and is truncated to a source pixel; outside -> 0. Pillow
  accumulates the coordinates in 16.16 fixed point or double, here they are computed directly in float32, so a
  few pixels on rounding boundaries pick the neighbouring source pixel.
- brightness / contrast / saturation: `ImageEnhance` = `Image.blend(degenerate, image, f)` in float32, truncated
  to uint8 and clipped; the degenerate images are black, the rounded mean of the 'L' image, and the 'L' image,
  with 'L' = (19595 R + 38470 G + 7471 B + 2^15) >> 16 (Pillow's integer ITU-R 601-2 weights).
- hue: torchvision's PIL `adjust_hue`: RGB -> HSV (Pillow's rgb2hsv, uint8), H += int(255 * hue) mod 256, back
  (hsv2rgb). Pillow does part of this in double; float32 here moves a rare H or S by one level.
tests/test_device_augment.py measures the agreement with torchvision for fixed parameters (docs/performance.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from foprokd_jax.data import augment as host

# Folded into PRNGKey(seed) first, so the augmentation stream differs from other users of the same seed.
AUGMENT_STREAM = 0x5A17
NUM_PARAM_KEYS = 10


def example_key(seed: int, step, index) -> jax.Array:
    """The key of global example `index` at train step `step` (both may be traced int32 values)."""
    base = jax.random.fold_in(jax.random.PRNGKey(seed), AUGMENT_STREAM)
    return jax.random.fold_in(jax.random.fold_in(base, step), index)


def draw_params(key: jax.Array, width: int, height: int) -> dict:
    """One example's parameters, with the host version's distributions (data/augment.py, torchvision's)."""
    k = jax.random.split(key, NUM_PARAM_KEYS)

    def uniform(key, low, high):
        return jax.random.uniform(key, (), minval=low, maxval=high)

    max_dx = host.AFFINE_TRANSLATE[0] * width
    return {
        "choice": jax.random.randint(k[0], (), 0, len(host.GEOMETRIC_CHOICES)),
        "scale": uniform(k[1], *host.AFFINE_SCALE_RANGE),
        # torchvision rounds the translation to whole pixels (Python round: half to even, as jnp.round).
        "tx": jnp.round(uniform(k[2], -max_dx, max_dx)),
        "angle": uniform(k[3], -host.ROTATION_DEGREES, host.ROTATION_DEGREES),
        "order": jax.random.permutation(k[4], 4),
        "brightness": uniform(k[5], 1 - host.BRIGHTNESS, 1 + host.BRIGHTNESS),
        "contrast": uniform(k[6], 1 - host.CONTRAST, 1 + host.CONTRAST),
        "saturation": uniform(k[7], 1 - host.SATURATION, 1 + host.SATURATION),
        "hue": uniform(k[8], -host.HUE, host.HUE),
        "flips": jax.random.uniform(k[9], (2,)) < 0.5,  # (horizontal, vertical), torch: rand(1) < p
    }


def affine_inverse_matrix(width, height, angle=0.0, translate=(0.0, 0.0), scale=1.0, shear=(0.0, 0.0)):
    """Output -> input map (a, b, c, d, e, f) of torchvision's `F.affine` on a PIL image (centre (w/2, h/2)).

    torchvision `_get_inverse_affine_matrix`: M = T C R S Sh C^-1, inverted; angle and shear in degrees.
    The reference chain uses scale and translate only; angle and shear are here for configurations that add them.
    """
    cx, cy = width * 0.5, height * 0.5
    rot = jnp.deg2rad(angle)
    sx, sy = jnp.deg2rad(shear[0]), jnp.deg2rad(shear[1])
    a = jnp.cos(rot - sy) / jnp.cos(sy)
    b = -jnp.cos(rot - sy) * jnp.tan(sx) / jnp.cos(sy) - jnp.sin(rot)
    c = jnp.sin(rot - sy) / jnp.cos(sy)
    d = -jnp.sin(rot - sy) * jnp.tan(sx) / jnp.cos(sy) + jnp.cos(rot)
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    tx, ty = translate
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return jnp.stack([m0, m1, m2, m3, m4, m5]).astype(jnp.float32)


def rotate_inverse_matrix(width, height, angle):
    """Output -> input map of Pillow's `Image.rotate(angle)` about (w/2, h/2), no expand (RandomRotation)."""
    cx, cy = width * 0.5, height * 0.5
    a = -jnp.deg2rad(jnp.mod(angle, 360.0))
    cos, sin = jnp.cos(a), jnp.sin(a)
    return jnp.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]).astype(jnp.float32)


def geometric_matrix(params: dict, width: int, height: int) -> jax.Array:
    """The inverse matrix of the geometric transform `params['choice']` picked (host: GEOMETRIC_CHOICES order)."""
    scale = affine_inverse_matrix(width, height, scale=params["scale"])
    translate = affine_inverse_matrix(width, height, translate=(params["tx"], 0.0))
    rotate = rotate_inverse_matrix(width, height, params["angle"])
    return jnp.stack([scale, translate, rotate])[params["choice"]]


def _fixed_16_16(v):
    """Pillow's FIX(v) = floor(v * 65536 + 0.5) as int32, exact in float32 (v * 65536 is exact)."""
    t = v * 65536.0
    low = jnp.floor(t)
    return (low + (t - low >= 0.5)).astype(jnp.int32)


def source_pixels(matrix: jax.Array, height: int, width: int):
    """Integer source coordinates (ix, iy) that Pillow's NEAREST affine transform reads for each output pixel.

    Pillow (`Geometry.c`, ImagingTransformAffine) takes one of two paths: a pure scale/shift (b = d = 0) goes
    through ImagingScaleAffine, source = trunc(a (x + 0.5) + c), computed here directly in float32; any other
    matrix (rotation, shear) through `affine_fixed`, 16.16 fixed point accumulated per pixel, reproduced here in
    int32. A coordinate below 0 is outside (Pillow's COORD gives -1).
    """
    ys, xs = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    fx, fy = xs.astype(jnp.float32) + 0.5, ys.astype(jnp.float32) + 0.5
    u = matrix[0] * fx + matrix[1] * fy + matrix[2]
    v = matrix[3] * fx + matrix[4] * fy + matrix[5]
    scale_ix = jnp.where(u < 0, -1, jnp.floor(u).astype(jnp.int32))
    scale_iy = jnp.where(v < 0, -1, jnp.floor(v).astype(jnp.int32))
    a0, a1, a3, a4 = (_fixed_16_16(matrix[i]) for i in (0, 1, 3, 4))
    a2 = _fixed_16_16(matrix[2] + matrix[0] * 0.5 + matrix[1] * 0.5)
    a5 = _fixed_16_16(matrix[5] + matrix[3] * 0.5 + matrix[4] * 0.5)
    fixed_ix = (a2 + ys * a1 + xs * a0) >> 16  # arithmetic shift: floor, so negatives stay negative
    fixed_iy = (a5 + ys * a4 + xs * a3) >> 16
    scaling = (matrix[1] == 0) & (matrix[3] == 0)
    return jnp.where(scaling, scale_ix, fixed_ix), jnp.where(scaling, scale_iy, fixed_iy)


def warp_nearest(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """Pillow's NEAREST affine resampling of one (H, W, C) image through `matrix`, fill 0."""
    h, w = image.shape[:2]
    ix, iy = source_pixels(matrix, h, w)
    inside = (ix >= 0) & (iy >= 0) & (ix < w) & (iy < h)
    out = image[jnp.clip(iy, 0, h - 1), jnp.clip(ix, 0, w - 1)]
    return jnp.where(inside[..., None], out, jnp.zeros_like(out))


def luminance(rgb: jax.Array) -> jax.Array:
    """Pillow's RGB -> 'L' on integer-valued float32 (H, W, 3), as float32."""
    r, g, b = (rgb[..., i].astype(jnp.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(jnp.float32)


def blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
    """Pillow's `Image.blend(degenerate, image, factor)` (float32 arithmetic), truncated and clipped to [0, 255]."""
    return jnp.floor(jnp.clip(degenerate + factor * (image - degenerate), 0.0, 255.0))


def _round_half_away(x):
    """C's round() for x >= 0."""
    return jnp.floor(x + 0.5)


def _two_sum(a, b):
    """(a + b rounded, its exact rounding error): Knuth's TwoSum. The barriers keep XLA from simplifying
    (a + b) - a to b, which it does on CPU and which would zero the error term."""
    barrier = jax.lax.optimization_barrier
    s = barrier(a + b)
    bb = barrier(s - a)
    return s, (a - barrier(s - bb)) + (b - bb)


def _opaque_constant(like, value: float):
    """`value` in the shape of `like`, as a function of `like` (never true: NaN does not occur here).

    XLA rewrites a division by a constant as a multiplication by its reciprocal, which is not correctly rounded
    (it moved Pillow's H by one level in some compiles); dividing by this keeps the IEEE division.
    """
    return jnp.where(jnp.isnan(like), like, jnp.asarray(value, like.dtype))


def _offset_difference(k: float, x, y):
    """float32 of k + x - y computed exactly, as Pillow does in double (`2.0 + rc - bc`)."""
    d, e1 = _two_sum(x, -y)
    s, e2 = _two_sum(jnp.float32(k), d)
    return s + (e1 + e2)


def _floor_255(q):
    """floor(255 q) for float32 q in [0, 1] with the product exact (Pillow multiplies by 255.0 in double)."""
    mantissa, exponent = jnp.frexp(q)
    m = (mantissa * 2.0**24).astype(jnp.uint32)  # q = m 2^(exponent - 24), m < 2^24, so 255 m < 2^32
    shift = (24 - exponent).astype(jnp.uint32)
    return jnp.where(shift >= 32, jnp.uint32(0), (m * jnp.uint32(255)) >> jnp.minimum(shift, 31)).astype(jnp.float32)


def rgb_to_hsv(rgb: jax.Array):
    """Pillow's rgb2hsv on integer-valued float32 (H, W, 3): uint8-valued H, S, and V = max(R, G, B).

    Pillow: rc, gc, bc, s in float; h = bc - gc (float), 2.0 + rc - bc or 4.0 + gc - rc (double, stored as
    float); fmod(h / 6.0 + 1.0, 1.0) (double, stored as float); (int)(h * 255.0) (double). Each double step is
    reproduced exactly in float32 (tests/test_device_augment.py checks all 2^24 colours).
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = jnp.max(rgb, axis=-1), jnp.min(rgb, axis=-1)
    grey = maxc == minc
    cr = jnp.where(grey, 1.0, maxc - minc)
    s = cr / jnp.where(maxc == 0, 1.0, maxc)
    rc, gc, bc = (maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr
    h = jnp.where(
        r == maxc, bc - gc, jnp.where(g == maxc, _offset_difference(2.0, rc, bc), _offset_difference(4.0, gc, rc))
    )
    # fmod(h / 6 + 1, 1) rounded once to float: h / 6 for h >= 0 (h < 6), 1 - (-h) / 6 for h in [-1, 0).
    six = _opaque_constant(h, 6.0)
    q = jnp.where(h >= 0, h / six, 1.0 - (-h) / six)
    uh = jnp.where(q >= 1.0, 255.0, _floor_255(q))
    uh = jnp.where(grey, 0.0, jnp.clip(uh, 0, 255))
    us = jnp.where(grey, 0.0, jnp.clip(_floor_255(s), 0, 255))
    return uh, us, maxc


def hsv_to_rgb(h, s, v):
    """Pillow's hsv2rgb on uint8-valued float32 channels -> (H, W, 3)."""
    # i = floor(6 h / 255) and f = 6 h / 255 - i from the integer remainder (Pillow: double, f stored as float).
    c255 = _opaque_constant(h, 255.0)
    i = jnp.floor_divide(h * 6.0, c255)
    f = (h * 6.0 - c255 * i) / c255
    fs = s / c255
    p = jnp.clip(_round_half_away(v * (1.0 - fs)), 0, 255)
    q = jnp.clip(_round_half_away(v * (1.0 - fs * f)), 0, 255)
    t = jnp.clip(_round_half_away(v * (1.0 - fs * (1.0 - f))), 0, 255)
    sector = jnp.mod(i, 6).astype(jnp.int32)  # Pillow's case 6 (h = 255) is case 0
    options = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    rgb = jnp.stack([jnp.stack(o, -1) for o in options])
    rgb = jnp.take_along_axis(rgb, sector[None, ..., None], axis=0)[0]
    return jnp.where((s == 0)[..., None], jnp.stack([v, v, v], -1), rgb)


def adjust_hue(rgb: jax.Array, hue_factor) -> jax.Array:
    """torchvision's PIL `adjust_hue` (host: data/augment.py adjust_hue) on integer-valued float32 (H, W, 3)."""
    h, s, v = rgb_to_hsv(rgb)
    shift = jnp.trunc(hue_factor * 255.0)  # np.int32(hue_factor * 255), then uint8 wrap-around
    return hsv_to_rgb(jnp.mod(h + shift, 256.0), s, v)


def adjust_brightness(rgb, factor):
    return blend(jnp.zeros_like(rgb), rgb, factor)


def adjust_contrast(rgb, factor):
    # ImageEnhance.Contrast: degenerate = int(mean of the 'L' image + 0.5), computed exactly in integers.
    lum = luminance(rgb).astype(jnp.int32)
    n = lum.size
    mean = (2 * jnp.sum(lum) + n) // (2 * n)
    return blend(jnp.full_like(rgb, mean.astype(jnp.float32)), rgb, factor)


def adjust_saturation(rgb, factor):
    return blend(jnp.broadcast_to(luminance(rgb)[..., None], rgb.shape), rgb, factor)


def color_jitter(rgb: jax.Array, params: dict) -> jax.Array:
    """ColorJitter's four ops in the order `params['order']` (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    ops = (
        lambda x: adjust_brightness(x, params["brightness"]),
        lambda x: adjust_contrast(x, params["contrast"]),
        lambda x: adjust_saturation(x, params["saturation"]),
        lambda x: adjust_hue(x, params["hue"]),
    )
    for position in range(4):
        rgb = jax.lax.switch(params["order"][position], ops, rgb)
    return rgb


def augment_image(image: jax.Array, params: dict) -> jax.Array:
    """One uint8 (H, W, 3) image with the given parameters (`draw_params`) -> uint8 (H, W, 3)."""
    h, w = image.shape[:2]
    x = warp_nearest(image, geometric_matrix(params, w, h)).astype(jnp.float32)
    x = color_jitter(x, params)
    x = jnp.where(params["flips"][0], x[:, ::-1], x)
    x = jnp.where(params["flips"][1], x[::-1, :], x)
    return x.astype(jnp.uint8)


def augment_batch(images: jax.Array, seed: int, step, first_index=0) -> jax.Array:
    """The skin augmentation of a uint8 (N, H, W, 3) batch; row i uses example_key(seed, step, first_index + i)."""
    if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    keys = jax.vmap(lambda i: example_key(seed, step, i))(first_index + jnp.arange(n, dtype=jnp.int32))
    params = jax.vmap(lambda k: draw_params(k, w, h))(keys)
    return jax.vmap(augment_image)(images, params)


__all__ = ["augment_batch", "augment_image", "draw_params", "example_key"]
