"""APTOS 2019 (5 diabetic-retinopathy grades): CRCKD (default) or the FoPro-KD family (fopro, ekd, bsm).

Data: download the Kaggle "APTOS 2019 Blindness Detection" training set so that data/aptos/train.csv and
data/aptos/train_images/<id_code>.png exist (or set --config.input.image_root), keeping Kaggle's row order of
train.csv (the folds depend on it). The first run resizes the 3,662 images once (docs/datasets.md).

Commands (fold 1 of CRCKD's split: StratifiedKFold(5, shuffle=True, random_state=2020), crckd spec §8):

    python launch/convert_teacher.py --src=densenet121-a639ec97.pth --arch=densenet121 \
        --out=teachers/imagenet_densenet121.npz                       # ImageNet DenseNet-121, once
    python launch/train.py --config=configs/aptos.py:method=crckd,fold=1 --workdir=workdirs/aptos_crckd_f1
    python launch/train.py --config=configs/aptos.py:method=crckd,variant=wce --workdir=workdirs/aptos_wce_f1
    python launch/train.py --config=configs/aptos.py:method=bsm,fold=1 --workdir=workdirs/aptos_bsm_f1

Arguments: method=crckd|fopro|ekd|bsm; fold=1..5; val=<fraction of all images carved from the training fold
into 'val'> (-1 = the dataset default 0: no validation set, as the reference: the test fold is monitored
every epoch and the LAST checkpoint is reported, eval.protocol='test_last'); runlocal (tiny, a few steps).
CRCKD only: variant=crckd|wce|mt (the readme's baselines "DenseNet121" and "+MT"), ccd_post=<CCD weight from
epoch 20; 0.01 = the code, 0.1 = the readme> (docs/crckd.md). FoPro-KD family only: teacher=<registry name>,
fpg=spectrum|radial|conditional, akd=True|False (configs/isic.py).

Reported (reference protocol, crckd spec §9): the student after the last epoch, and the mean of the last
crckd.eval_last_n_epochs = 11 per-epoch evaluations; presumably averaged over the 5 folds [NOT VERIFIED].
Expected result: the paper's tables were not retrieved (crckd spec §10), so no number is promised.
Hardware: 2,929 training images = 45 steps of 64 per epoch, 80 epochs of DenseNet-121 at 224 px: about an
hour on one modern GPU.
"""
from configs import common
from foprokd_jax.crckd import presets
from foprokd_jax.data import aptos
from foprokd_jax.models import teachers

METHODS = ("crckd", "fopro", "ekd", "bsm")


def get_config(arg=None):
    arg = common.parse_arg(arg, method="crckd", fold=1, val=-1.0, variant="crckd", ccd_post=0.01,
                           teacher="moco_r50", fpg="spectrum", akd=True, runlocal=False)
    if arg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {arg.method!r}")
    if not 1 <= arg.fold <= 5:
        raise ValueError(f"fold must be in 1..5, got {arg.fold}")
    if not (arg.val == -1.0 or 0.0 <= arg.val < 0.8):
        raise ValueError(f"val must be -1 (dataset default) or lie in [0, 0.8), got {arg.val}")
    if arg.variant not in presets.VARIANTS:
        raise ValueError(f"variant must be one of {presets.VARIANTS}, got {arg.variant!r}")
    if arg.fpg not in ("spectrum", "radial", "conditional"):
        raise ValueError(f"fpg must be 'spectrum', 'radial' or 'conditional', got {arg.fpg!r}")

    config = common.base_config()
    config.method = arg.method
    config.input.dataset = "aptos"
    config.input.image_root = "data/aptos"
    config.input.fold = arg.fold
    config.input.val_fraction = arg.val
    has_val = (aptos.DEFAULT_VAL_FRACTION if arg.val < 0 else arg.val) > 0
    config.eval.protocol = "val_test" if has_val else "test_last"
    val = "" if arg.val < 0 else f"_val{arg.val:g}"
    if arg.method == "crckd":
        presets.apply_reference(config, arg.variant, arg.ccd_post)
        tag = arg.variant if arg.ccd_post == 0.01 else f"{arg.variant}_ccdpost{arg.ccd_post:g}"
    else:
        spec = teachers.get_teacher_spec(arg.teacher)  # ValueError listing the registered names
        config.fpg.variant = arg.fpg
        config.fpg.lambda_adv = config.fpg.lambda_adv if arg.akd else 0.0
        config.teacher.update(dict(name=spec.name, artifact=spec.default_artifact, arch=spec.arch,
                                   feature_key=spec.feature_key))
        variant = f"_{arg.fpg}{'' if arg.akd else '_noakd'}" if arg.method == "fopro" else ""
        tag = f"{arg.method}{variant}_{spec.name}"
    config.name = f"aptos_{tag}_fold{arg.fold}{val}"
    # APTOS's classes have 155-1444 training images: no tail class under the 700 / 70 thresholds.
    if arg.runlocal:
        if arg.method == "crckd":
            presets.apply_runlocal(config)
        else:
            config.input.image_size = 28 if teachers.get_teacher_spec(arg.teacher).family == "vit" else 32
            config.input.batch_size = 8
            config.input.eval_batch_size = 16
            config.student.width = 8
            config.student.stage_sizes = (1, 1, 1, 1)
            config.total_steps = 4
            config.eval_every_steps = 2
            config.log_every_steps = 1
    config.lock()
    return config
