"""'crckd': CRCKD (Xing, Hou, Li, Yuan, Li, Meng, "Categorical Relation-Preserving Contrastive Knowledge
Distillation for Medical Image Classification", MICCAI 2021; code github.com/hathawayxxh/CRCKD): mean-teacher
distillation with class-guided contrastive (CCD) and categorical relation-preserving (CRP) losses, ported from the
authors' code.

Modules: `model` (DenseNet-121 + fc + classifier, embed heads), `losses`, `memory_bank`, `schedule`,
`optimizer`, `data` (two views + contrast indices), `state`, `step`, `config` (`config.crckd.*`), `method`
(`build`). docs/crckd.md lists every choice and how each ambiguity of the reference code was settled.
"""

from foprokd_jax.methods.crckd.config import default_config, validate
from foprokd_jax.methods.crckd.method import build

__all__ = ["build", "default_config", "validate"]
