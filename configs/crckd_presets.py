"""Config presets shared by configs/ham10000.py and configs/aptos.py: CRCKD's reference run and its baselines.

`apply_reference(config, variant)` sets what train_CRCKD.py runs (docs/crckd.md §R6-§R7): 80 epochs, global batch 64
(32 per GPU x the default 2 GPUs, G15), 224 px, ImageNet DenseNet-121 in both networks. The readme's two
baselines keep the CRCKD machinery (banks still update, docs/crckd.md §R6) with zero weights:
    'crckd'  L_WCE + 0.1 L_CCD, then + w(e) L_KL + ccd_post L_CCD + L_CRP from epoch 20
    'wce'    "Baseline 1: DenseNet121": L_WCE only
    'mt'     "Baseline 2: +MT": L_WCE + w(e) L_KL from epoch 20
"""

from configs import common

VARIANTS = ("crckd", "wce", "mt")
# launch/convert_teacher.py --src=densenet121-a639ec97.pth --arch=densenet121 --out=teachers/imagenet_densenet121.npz
IMAGENET_DENSENET121 = "teachers/imagenet_densenet121.npz"


def apply_reference(config, variant: str = "crckd", ccd_weight_post: float = 0.01) -> None:
    """CRCKD's reference settings on an unlocked config (method 'crckd')."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    config.total_epochs = 80
    config.input.batch_size = 64
    config.input.eval_batch_size = 64
    config.input.image_size = 224
    config.crckd.backbone_init = IMAGENET_DENSENET121
    config.crckd.ccd_weight_post = ccd_weight_post
    if variant != "crckd":
        config.crckd.ccd_weight_pre = 0.0
        config.crckd.ccd_weight_post = 0.0
        config.crckd.crp_weight = 0.0
        config.crckd.consistency = 1.0 if variant == "mt" else 0.0


def apply_runlocal(config) -> None:
    """Tiny shapes and a few steps (tests, smoke runs): random init, 2-block DenseNet, small P and K."""
    config.input.image_size = 32
    config.input.batch_size = 8
    config.input.eval_batch_size = 16
    config.crckd.backbone_init = ""
    config.crckd.update(
        dict(
            growth_rate=8,
            block_config=(1, 1),
            num_init_features=16,
            bn_size=2,
            feat_dim=16,
            nce_p=2,
            nce_k=16,
            begin_distill_epoch=1,
            consistency_rampup_epochs=2.0,
        )
    )
    config.total_steps = 4
    config.eval_every_steps = 2
    config.log_every_steps = 1


def apply_method(config, arg) -> str:
    """A HAM10000/APTOS config's method: CRCKD's reference run (`arg.variant`, `arg.ccd_post`) or the FoPro-KD
    family (`configs.common.apply_kd_method`). Returns the run-name tag."""
    if arg.method == "crckd":
        apply_reference(config, arg.variant, arg.ccd_post)
        return arg.variant if arg.ccd_post == 0.01 else f"{arg.variant}_ccdpost{arg.ccd_post:g}"
    return common.apply_kd_method(config, arg)


def apply_method_runlocal(config, arg) -> None:
    if arg.method == "crckd":
        apply_runlocal(config)
    else:
        common.apply_kd_runlocal(config, arg.teacher)
