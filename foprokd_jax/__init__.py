"""foprokd_jax: knowledge distillation from frozen public vision models into small students, for
long-tailed medical image classification (FoPro-KD, Elbatel et al., IEEE TMI 2024; CRCKD, Xing et al.,
MICCAI 2021), in JAX/Flax."""

__version__ = "0.1.0"
