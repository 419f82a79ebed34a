"""'ekd': Effective Knowledge Distillation, the part of FoPro-KD the authors released (Elbatel, Martí, Li,
"FoPro-KD: Fourier Prompted Effective Knowledge Distillation for Long-Tailed Medical Image Recognition", IEEE
TMI 43(3), 2024; code github.com/xmed-lab/FoPro-KD). A frozen public teacher's pooled feature is distilled into
the ResNet-18 student's projector with a 2 - 2cos loss, beside the long-tail loss on two heads.

Files: `config.py` (keys: the teacher, loss.free_u), `objective.py` (the EKD loss, as the released code),
`step.py` (the compiled step), `method.py` (`build`). The released code path line by line:
docs/reference_semantics.md.
"""

from foprokd_jax.methods.ekd.config import default_config, validate
from foprokd_jax.methods.ekd.method import build

__all__ = ["build", "default_config", "validate"]
