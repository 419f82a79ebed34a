"""APTOS 2019 (5 diabetic-retinopathy grades): CRCKD (default) or the FoPro-KD family (fopro, ekd, bsm).

Data: download the Kaggle "APTOS 2019 Blindness Detection" training set so that data/aptos/train.csv and
data/aptos/train_images/<id_code>.png exist (or set --config.input.image_root), keeping Kaggle's row order of
train.csv (the folds depend on it). The first run resizes the 3,662 images once (docs/datasets.md).

Commands (fold 1 of CRCKD's split: StratifiedKFold(5, shuffle=True, random_state=2020), docs/crckd.md §R8):

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

Reported (reference protocol, docs/crckd.md §R9): the student after the last epoch, and the mean of the last
crckd.eval_last_n_epochs = 11 per-epoch evaluations; presumably averaged over the 5 folds [NOT VERIFIED].
Expected result: the paper's tables were not retrieved (docs/crckd.md §R10), so no number is promised.
Hardware: 2,929 training images = 45 steps of 64 per epoch, 80 epochs of DenseNet-121 at 224 px: about an
hour on one modern GPU.
"""

from configs import common
from configs import crckd_presets as presets
from foprokd_jax.data import aptos

METHODS = ("crckd", "fopro", "ekd", "bsm")


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        method="crckd",
        fold=1,
        val=-1.0,
        variant="crckd",
        ccd_post=0.01,
        teacher="moco_r50",
        fpg="spectrum",
        akd=True,
        runlocal=False,
    )
    if arg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {arg.method!r}")
    common.check_kd_args(arg)
    if not (arg.val == -1.0 or 0.0 <= arg.val < 0.8):
        raise ValueError(f"val must be -1 (dataset default) or lie in [0, 0.8), got {arg.val}")
    if arg.variant not in presets.VARIANTS:
        raise ValueError(f"variant must be one of {presets.VARIANTS}, got {arg.variant!r}")

    config = common.method_config(arg.method)
    config.input.dataset = "aptos"
    config.input.image_root = "data/aptos"
    config.input.fold = arg.fold
    config.input.val_fraction = arg.val
    has_val = (aptos.DEFAULT_VAL_FRACTION if arg.val < 0 else arg.val) > 0
    config.eval.protocol = "val_test" if has_val else "test_last"
    val = "" if arg.val < 0 else f"_val{arg.val:g}"
    tag = presets.apply_method(config, arg)
    config.name = f"aptos_{tag}_fold{arg.fold}{val}"
    # APTOS's classes have 155-1444 training images: no tail class under the 700 / 70 thresholds.
    if arg.runlocal:
        presets.apply_method_runlocal(config, arg)
    config.lock()
    return config
