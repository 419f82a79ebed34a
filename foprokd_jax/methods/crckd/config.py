"""Config subtree of 'crckd': `config.crckd`, CRCKD's networks, losses, schedule and optimiser (docs/crckd.md).

Defaults are the reference CODE's effective values; the switches marked (G<n>) are the reference's gotchas, each
settled in docs/crckd.md. CRCKD reads no student/teacher/loss/optim subtree (it has its own networks and
optimiser) and no `input.augment` (its two-view augmentation is `crckd.augment*`).
"""

import ml_collections

from foprokd_jax.methods.crckd import data as crckd_data

TEACHER_INITS = ("independent", "student")
CE_WEIGHTINGS = ("inverse_frequency", "none")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.backbone_init = ""  # '' = random init; or a converted torchvision densenet121 artifact (ImageNet, the
    #                                  reference: launch/convert_teacher.py --arch=densenet121) loaded into both nets
    c.growth_rate = 32  # DenseNet-121 (torchvision); tests shrink the four DenseNet keys
    c.block_config = (6, 12, 24, 16)
    c.num_init_features = 64
    c.bn_size = 4
    c.feat_dim = 128  # fc_layer width (feature4) = embedding width of embed_s/embed_t (s/t/feat_dim)
    c.teacher_init = "independent"  # (G20) 'independent' own random heads as the code; 'student' = a copy
    c.ema_decay = 0.99  # mean teacher: alpha_t = min(1 - 1/(t + 1), ema_decay), params only
    c.teacher_rot_flip = True  # (G4) teacher view also gets a per-sample vflip (p .5) + rot90 k ~ U{0..3}
    c.augment = True  # both views: RandomAffine(degrees, translate) + RandomHorizontalFlip; False = none
    c.augment_degrees = 10.0
    c.augment_translate = 0.02  # max shift as a fraction of width/height, rounded to whole pixels
    c.nce_p = 20  # positives per anchor (own memory slot + P-1 same-class, no replacement)
    c.nce_k = 4096  # negatives per anchor (replacement only when the pool is smaller)
    c.nce_t = 0.07  # temperature of the CCD scores and of the CRP relations
    c.nce_m = 0.5  # memory momentum: M[i] <- normalize(m M[i] + (1 - m) g_i)
    c.positive_mode = "multi_pos"  # 'multi_pos' (CRCKD) or 'exact' (1 positive = own slot; 'relax' == exact, G9)
    c.negative_mode = "sup"  # 'sup': negatives from other classes; 'unsup' (ablation): any other example
    # (G5) memory rows and the N of the noise constant K/N and of Z = mean(exp) * N. -1 = the training-set size;
    # the code's flag is 2929 (right only for APTOS folds 1-2). Must be >= the training-set size.
    c.n_data = -1
    c.z_s = -1.0  # Z of student-anchor scores; < 0 = set once from the first step's GLOBAL mean
    c.z_t = -1.0  # Z of teacher-anchor scores; same rule
    c.crp_relu_centroids = True  # (G11) ReLU on memory rows before the class mean, as the code
    c.ccd_weight_pre = 0.1  # CCD weight before begin_distill_epoch (CCD_b4_weight)
    c.ccd_weight_post = 0.01  # (G2) from begin_distill_epoch: 0.01 = code (0.1 applied twice), 0.1 = readme
    c.crp_weight = 1.0  # CRP_distill, from begin_distill_epoch
    c.consistency = 1.0  # mean-teacher KL weight after ramp-up (0 = no MT)
    c.consistency_rampup_epochs = 30.0  # sigmoid ramp over epochs counted from 0 (G3)
    c.begin_distill_epoch = 20  # (G3) begin_ema: KL and CRP start here, CCD weight switches to _post
    c.ce_class_weights = "inverse_frequency"  # (G12) 'inverse_frequency' (N/n_c, weighted mean) or 'none'
    c.eval_last_n_epochs = 11  # (G17) report the mean of the last N per-epoch evaluations (code: 11, not 10)
    c.optim = ml_collections.ConfigDict()
    c.optim.weight_decay = 5e-4  # (G16) COUPLED L2 (torch Adam weight_decay) on every trainable parameter
    c.optim.max_lr = 3e-4  # OneCycleLR (cosine, two phases), stepped per iteration
    c.optim.pct_start = 0.3
    c.optim.div_factor = 25.0  # start lr = max_lr / 25
    c.optim.final_div_factor = 1e4  # final lr = start lr / 1e4
    c.optim.base_momentum = 0.85  # Adam beta1 cycles max -> base -> max with the LR
    c.optim.max_momentum = 0.95
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.epoch_start_lr = 1e-4  # (G16) code quirk: the first step of every epoch >= 1 uses base_lr; 0 = off
    return ml_collections.ConfigDict(dict(crckd=c))


def validate(config) -> None:
    """Allowed values and ranges of config.crckd (checks that need the dataset run in `method.build`)."""
    cfg = config.crckd
    choices = {
        "teacher_init": TEACHER_INITS,
        "ce_class_weights": CE_WEIGHTINGS,
        "positive_mode": crckd_data.POSITIVE_MODES,
        "negative_mode": crckd_data.NEGATIVE_MODES,
    }
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise ValueError(f"config.crckd.{key}={cfg[key]!r} is not one of {allowed}")
    for key in ("nce_t", "feat_dim"):
        if cfg[key] <= 0:
            raise ValueError(f"config.crckd.{key}={cfg[key]} must be > 0")
    if not 0.0 <= cfg.nce_m < 1.0 or not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"config.crckd.nce_m={cfg.nce_m} and ema_decay={cfg.ema_decay} must lie in [0, 1)")
