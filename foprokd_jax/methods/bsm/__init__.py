"""'bsm': the long-tail baseline of FoPro-KD's tables: the ResNet-18 student trained with Balanced Softmax
(Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020) on its fc head, no
teacher. Any long-tail loss of `foprokd_jax/losses.py` can replace BSM (`config.loss.name`, docs/long_tail.md).

Files: `config.py` (its config keys), `step.py` (the compiled step), `method.py` (`build`).
"""

from foprokd_jax.methods.bsm.config import default_config, validate
from foprokd_jax.methods.bsm.method import build

__all__ = ["build", "default_config", "validate"]
