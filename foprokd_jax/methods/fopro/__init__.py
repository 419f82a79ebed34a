"""'fopro': FoPro-KD (Elbatel, Martí, Li, "FoPro-KD: Fourier Prompted Effective Knowledge Distillation for
Long-Tailed Medical Image Recognition", IEEE TMI 43(3), 2024; github.com/xmed-lab/FoPro-KD): EKD whose frozen
teacher sees the image through a learned Fourier Prompt Generator (FPG), trained adversarially against the
student (AKD). The FPG and AKD were never released: this package is a documented RECONSTRUCTION (docs/fpg.md).

Everything FoPro-KD adds to EKD is in this folder:
- `prompt.py`: the FPG (`FourierPrompt`: 'spectrum', 'radial' and 'conditional' gains on the amplitude spectrum);
- `step.py`: the joint student + FPG step (one forward, two optimisers; the `fpg.update_every` speed switch);
- `config.py`: every `fpg.*` key, documented; `method.py`: `build`;
- `plots.py`: the learned gain spectrum and prompted images; `frequency_analysis.py`: a teacher's frequency
  preferences (launch/analyze_frequency.py).
"""

from foprokd_jax.methods.fopro.config import default_config, validate
from foprokd_jax.methods.fopro.method import build

__all__ = ["build", "default_config", "validate"]
