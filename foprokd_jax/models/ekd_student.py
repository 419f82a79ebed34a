"""The EKD student of FoPro-KD: a ResNet trunk plus the heads of docs/reference_semantics.md §3.3.

Layout of the released "ImageNet" ResNet-18 variant (``models/resnet_free.py``):

  h  = GAP(layer4)       512-d for ResNet-18
  z1 = fc(h)             Linear(512, C) on the *raw* feature
  p  = p_free(h)         Linear(512, 512) -> BatchNorm1d -> ReLU -> Linear(512, D_t)
  z2 = fc_free(p)        Linear(D_t, C) on the projection

``p`` is matched to the frozen teacher's embedding (D_t = 2048 for the MoCo-v2 ResNet-50 of Chen et
al. 2020). Only ``z1`` is used at evaluation time. Every Linear uses torch's default init and the
BatchNorm1d torch's defaults (momentum 0.1 == Flax 0.9, eps 1e-5), per docs/reference_semantics.md §7.

With the LDAM loss the reference swaps ``fc`` and ``fc_free`` for a cosine classifier (``ClassifierLDAM``,
docs/reference_semantics.md §5): ``classifier='cosine'`` here, or ``'auto'`` resolved from the loss name by
``resolve_classifier``.
"""

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from foprokd_jax.losses import l2_normalize
from foprokd_jax.models import students
from foprokd_jax.models.resnet import BN_EPSILON, BN_MOMENTUM, ResNet
from foprokd_jax.models.torch_init import torch_dense


class FreeProjector(nn.Module):
    """``p_free``: Linear(d, d) -> BatchNorm1d(d) -> ReLU -> Linear(d, D_t); no output norm/activation.

    The hidden width equals the input width (512 for a ResNet-18 trunk), as in the reference code.
    """

    out_dim: int
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, train: bool):
        hidden = h.shape[-1]
        y = torch_dense(hidden, hidden, name="linear1", dtype=self.dtype)(h)
        y = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            axis_name=self.bn_axis_name,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            force_float32_reductions=True,  # float32 batch/running statistics under a bfloat16 compute dtype
            name="bn",
        )(y)
        y = nn.relu(y)
        return torch_dense(self.out_dim, hidden, name="linear2", dtype=self.dtype)(y)


CLASSIFIERS = ("linear", "cosine")

# config.student.dtype -> compute dtype. bfloat16 is for GPU/TPU (XLA:CPU emulates it and is slower).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def student_compute_dtype(name: str) -> Any:
    """`config.student.dtype` ('float32' or 'bfloat16') -> jnp dtype; parameters stay float32 either way."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.student.dtype={name!r} is not one of {tuple(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def resolve_classifier(classifier: str, loss_name: str) -> str:
    """`config.student.classifier` -> 'linear' or 'cosine'; 'auto' is cosine exactly for LDAM, as the reference.

    The reference replaces both heads by `ClassifierLDAM` when `--loss_fn_name=LDAM` (`methods/free.py:134-141`).
    """
    if classifier == "auto":
        return "cosine" if str(loss_name).lower() == "ldam" else "linear"
    if classifier not in CLASSIFIERS:
        raise ValueError(f"config.student.classifier={classifier!r} is not one of {CLASSIFIERS + ('auto',)}")
    return classifier


def _unit_column_uniform(key, shape, dtype=jnp.float32):
    """`ClassifierLDAM`'s init: U(-1, 1), then every class column rescaled to unit L2 norm (renorm + mul)."""
    return l2_normalize(jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0), axis=0).astype(dtype)


class CosineClassifier(nn.Module):
    """LDAM's normalised-linear classifier (Cao et al., NeurIPS 2019; reference `ClassifierLDAM`).

    z_c = <x / |x|, w_c / |w_c|>, no bias: cosine logits in [-1, 1] that the LDAM loss scales by s.
    Computed in float32 whatever the student's compute dtype (it is tiny and feeds the loss directly).
    """

    num_classes: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", _unit_column_uniform, (x.shape[-1], self.num_classes), jnp.float32)
        return l2_normalize(x.astype(jnp.float32), -1) @ l2_normalize(kernel, 0)


def classifier_head(kind: str, num_classes: int, fan_in: int, name: Optional[str] = None, dtype: Any = jnp.float32):
    """A class head: torch-initialised Linear ('linear') or the cosine classifier ('cosine')."""
    if kind == "linear":
        return torch_dense(num_classes, fan_in, name=name, dtype=dtype)
    if kind == "cosine":
        return CosineClassifier(num_classes, name=name)
    raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {kind!r}")


class EKDStudent(nn.Module):
    """ResNet trunk + ``fc`` + ``p_free`` + ``fc_free``; returns ``dict(h, z1, p, z2)``.

    Attributes:
      num_classes: C, the number of target classes.
      teacher_dim: D_t, the width of the teacher embedding that ``p`` is distilled towards; None builds
        the student without ``p_free``/``fc_free`` (the BSM-only baseline).
      trunk: the backbone, a ``models/students.py`` arch ('resnet18', 'resnet50', 'mobilenet_v3_large',
        'efficientnet_b0', 'vit_tiny_patch16'). For a ResNet, a non-empty ``stage_sizes`` builds a custom
        (e.g. tiny test) trunk from ``stage_sizes``/``block``/``width``; the other backbones ignore all three.
      bn_axis_name: mesh axis for synchronised BN, used by the trunk and by ``p_free``.
      dtype: compute dtype (float32, or bfloat16 for GPU/TPU mixed precision). Parameters and BN statistics
        stay float32 and every output (h, z1, p, z2) is returned in float32, so the losses run in float32.
      classifier: 'linear' (reference default) or 'cosine' (LDAM's ``ClassifierLDAM``) for ``fc`` and
        ``fc_free``; see ``resolve_classifier`` for the config's 'auto'.
    """

    num_classes: int
    teacher_dim: Optional[int]
    trunk: str = "resnet18"
    stage_sizes: Optional[Sequence[int]] = None
    block: str = "basic"
    width: int = 64
    bn_axis_name: Optional[str] = None
    dtype: Any = jnp.float32
    classifier: str = "linear"

    def _build_trunk(self, image_size: int) -> nn.Module:
        # An empty sequence (a config default) means "use the named trunk", like None; stage_sizes only
        # shapes ResNets (the other backbones have fixed published depths).
        if self.stage_sizes and self.trunk in students.RESNET_ARCHS:
            return ResNet(
                stage_sizes=tuple(self.stage_sizes),
                block=self.block,
                width=self.width,
                num_classes=None,
                bn_axis_name=self.bn_axis_name,
                dtype=self.dtype,
                name="trunk",
            )
        trunk, _ = students.build_backbone(
            self.trunk,
            None,
            self.dtype,
            bn_axis_name=self.bn_axis_name,
            image_size=image_size,
            resnet_width=self.width,
            name="trunk",
        )
        return trunk

    @nn.compact
    def __call__(self, x, train: bool) -> Dict[str, jnp.ndarray]:
        h = self._build_trunk(x.shape[1])(x, train)["pre_logits"]
        feature_dim = h.shape[-1]
        f32 = jnp.float32  # outputs feed the losses: cast back from the compute dtype (no-op in float32)
        z1 = classifier_head(self.classifier, self.num_classes, feature_dim, name="fc", dtype=self.dtype)(h)
        if self.teacher_dim is None:
            # The plain long-tail baseline ('bsm'): no distillation heads, only fc on the raw feature.
            return dict(h=h.astype(f32), z1=z1.astype(f32))
        p = FreeProjector(self.teacher_dim, bn_axis_name=self.bn_axis_name, dtype=self.dtype, name="p_free")(h, train)
        z2 = classifier_head(self.classifier, self.num_classes, self.teacher_dim, name="fc_free", dtype=self.dtype)(p)
        return dict(h=h.astype(f32), z1=z1.astype(f32), p=p.astype(f32), z2=z2.astype(f32))
