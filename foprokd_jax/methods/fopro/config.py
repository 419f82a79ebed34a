"""Config subtrees of 'fopro': EKD's keys plus `config.fpg`, the Fourier Prompt Generator and adversarial KD.

The FPG and AKD are a RECONSTRUCTION (the authors never released them): docs/fpg.md explains every key below.
"""

import ml_collections

from foprokd_jax.methods.ekd import config as ekd_config
from foprokd_jax.methods.fopro import prompt, step


def fpg_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = "spectrum"  # 'spectrum' (gain per rfft2 bin), 'radial' (per frequency band), 'conditional'
    c.alpha = 1.0  # log-gain bound: gain = exp(alpha * tanh(g)) in [e^-alpha, e^alpha]
    c.num_bands = 16  # 'radial': number of radial frequency bands
    c.share_channels = False  # 'spectrum'/'radial': one gain for R, G and B
    c.hidden = 16  # 'conditional': channels of the small CNN on the log-amplitude
    c.depth = 3  # 'conditional': 3x3 conv + ReLU layers before the output conv
    c.lambda_cls = 1.0  # weight of the explore term: long-tail loss of a linear head on f(P(x))
    c.lambda_adv = 1.0  # AKD: the prompt maximises student-teacher disagreement (0 = FPG without AKD)
    c.lambda_reg = 1e-3  # keeps the prompt near identity: mean((log gain)^2)
    c.update_every = 1  # train the FPG on every k-th step only (speed switch); 1 = every step (default)
    # The FPG's own optimiser (prompt + explore head), the same torch-style Adam as the student's.
    c.optim = ml_collections.ConfigDict(
        dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip_norm=5.0)
    )
    return c


def default_config() -> ml_collections.ConfigDict:
    c = ekd_config.default_config()
    c.fpg = fpg_config()
    return c


def validate(config) -> None:
    ekd_config.validate(config)
    if config.fpg.variant not in prompt.VARIANTS:
        raise ValueError(f"config.fpg.variant={config.fpg.variant!r} is not one of {prompt.VARIANTS}")
    step.check_update_every(config.fpg.update_every)
