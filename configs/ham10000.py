"""HAM10000 (7 skin-lesion classes): CRCKD (default) or the FoPro-KD family (fopro, ekd, bsm).

Data: unpack the HAM10000 download (https://doi.org/10.7910/DVN/DBW86T) so that data/ham10000/
HAM10000_metadata.csv and data/ham10000/HAM10000_images_part_{1,2}/ exist (or set --config.input.image_root).
The first run resizes the 10,015 images once into the tfds array_record copy (docs/datasets.md).

Commands (fold 1 of the seeded stratified 5-fold partition, 70/10/20 train/val/test):

    python launch/convert_teacher.py --src=densenet121-a639ec97.pth --arch=densenet121 \
        --out=teachers/imagenet_densenet121.npz                       # ImageNet DenseNet-121, once
    python launch/train.py --config=configs/ham10000.py:method=crckd,fold=1 --workdir=workdirs/ham_crckd_f1
    python launch/train.py --config=configs/ham10000.py:method=crckd,variant=mt --workdir=workdirs/ham_mt_f1
    python launch/train.py --config=configs/ham10000.py:method=fopro,fold=1 --workdir=workdirs/ham_fopro_f1

Arguments: method=crckd|fopro|ekd|bsm; fold=1..5; split=lesion|image (image = image-level, LEAKY: the same
lesion in train and test, only to compare with published numbers); val=<fraction of all images carved from
the training folds into 'val'> (-1 = the dataset default 0.1; 0 = no val: the test fold is monitored and the
last checkpoint reported, eval.protocol='test_last'); runlocal (tiny shapes, a few steps).
CRCKD only: variant=crckd|wce|mt (the readme's baselines "DenseNet121" and "+MT"), ccd_post=<CCD weight from
epoch 20; 0.01 = the code, 0.1 = the readme> (docs/crckd.md). FoPro-KD family only: teacher=<registry name>,
fpg=spectrum|radial|conditional, akd=True|False (configs/isic.py).

CRCKD's HAM10000 split is not in its repository (docs/crckd.md §R8: probably image-level 70/10/20, 7012 training
images); the default here is lesion-grouped. Reported: the student; with a val split the checkpoint with
the best val balanced accuracy, evaluated on test; crckd.eval_last_n_epochs asks for the mean of the last 11
per-epoch evaluations as the reference reports.
Expected result: the paper's tables were not retrieved (docs/crckd.md §R10), so no number is promised.
Hardware: ~7,000 training images = ~110 steps of 64 per epoch, 80 epochs of DenseNet-121 at 224 px: hours
on one modern GPU.
"""

from configs import common
from configs import crckd_presets as presets
from foprokd_jax.data import ham10000

METHODS = ("crckd", "fopro", "ekd", "bsm")


def get_config(arg=None):
    arg = common.parse_arg(
        arg,
        method="crckd",
        fold=1,
        split="lesion",
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
    if arg.split not in ham10000.SPLIT_MODES:
        raise ValueError(f"split must be one of {ham10000.SPLIT_MODES}, got {arg.split!r}")
    if not (arg.val == -1.0 or 0.0 <= arg.val < 0.8):
        raise ValueError(f"val must be -1 (dataset default) or lie in [0, 0.8), got {arg.val}")
    if arg.variant not in presets.VARIANTS:
        raise ValueError(f"variant must be one of {presets.VARIANTS}, got {arg.variant!r}")

    config = common.method_config(arg.method)
    config.input.dataset = "ham10000"
    config.input.image_root = "data/ham10000"
    config.input.fold = arg.fold
    config.input.split_mode = arg.split
    config.input.val_fraction = arg.val
    has_val = (ham10000.DEFAULT_VAL_FRACTION if arg.val < 0 else arg.val) > 0
    config.eval.protocol = "val_test" if has_val else "test_last"
    val = "" if arg.val < 0 else f"_val{arg.val:g}"
    tag = presets.apply_method(config, arg)
    config.name = f"ham10000_{tag}_{arg.split}_fold{arg.fold}{val}"
    if arg.runlocal:
        presets.apply_method_runlocal(config, arg)
    config.lock()
    return config
