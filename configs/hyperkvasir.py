"""Hyper-Kvasir (23 GI classes, long-tailed): FoPro-KD (default), the released EKD, or the BSM baseline.

Data: unzip hyper-kvasir-labeled-images.zip (https://datasets.simula.no/hyper-kvasir/) so that
data/hyper-kvasir/labeled-images/lower-gi-tract/... exists (or set --config.input.image_root). The first run
resizes the 10,662 images once into data/tfds/hyperkvasir_resized/size224 (docs/datasets.md).

Commands (one fold of the seeded stratified 5-fold CV, MoCo-v2 ResNet-50 teacher):

    python launch/train.py --config=configs/hyperkvasir.py:method=fopro,fold=1 --workdir=workdirs/hk_fopro_f1
    python launch/train.py --config=configs/hyperkvasir.py:method=bsm,fold=1 --workdir=workdirs/hk_bsm_f1

Arguments: method=fopro|ekd|bsm, fpg=spectrum|radial|conditional, akd=True|False, teacher=<registry name>,
fold=1..5, val=<fraction of all images carved from the training folds into 'val'>, runlocal (tiny shapes,
a few steps).

Protocol (FoPro-KD spec §8.3, third-party notes only, unverified against the paper): stratified 5-fold CV
(Balanced-MixUp); no code or split files were released. With the default val=0 the splits are the training
folds and the test fold; the test fold is monitored and the LAST checkpoint is reported
(eval.protocol='test_last', no model selection on the test fold). val>0 (e.g. 0.1) carves a seeded
stratified validation split and selects on it (eval.protocol='val_test'); the training set then shrinks,
so classes near the 700 / 70 thresholds can change group. Head / medium / tail recall: > 700 / < 70
training images (eval.head_min / eval.tail_max); results.json's dataset_info.class_groups lists them.

Expected result: the paper's table could not be recovered (spec §11), so no number is promised.
Hardware: ~8,530 training images = 266 steps per epoch at batch 32, 224 px; hours on one modern GPU.
"""
from configs import common
from foprokd_jax.models import teachers


def get_config(arg=None):
    arg = common.parse_arg(arg, method="fopro", teacher="moco_r50", fold=1, val=0.0, fpg="spectrum", akd=True,
                           runlocal=False)
    if arg.method not in ("fopro", "ekd", "bsm"):
        raise ValueError(f"method must be 'fopro', 'ekd' or 'bsm', got {arg.method!r}")
    if arg.fpg not in ("spectrum", "radial", "conditional"):
        raise ValueError(f"fpg must be 'spectrum', 'radial' or 'conditional', got {arg.fpg!r}")
    spec = teachers.get_teacher_spec(arg.teacher)  # ValueError listing the registered names
    if not 1 <= arg.fold <= 5:
        raise ValueError(f"fold must be in 1..5, got {arg.fold}")
    if not 0.0 <= arg.val < 0.8:
        raise ValueError(f"val must lie in [0, 0.8) (a fraction of all images), got {arg.val}")

    config = common.base_config()
    variant = f"_{arg.fpg}{'' if arg.akd else '_noakd'}" if arg.method == "fopro" else ""
    val = f"_val{arg.val:g}" if arg.val else ""
    config.name = f"hyperkvasir_{arg.method}{variant}_{spec.name}_fold{arg.fold}{val}"
    config.method = arg.method
    config.fpg.variant = arg.fpg
    config.fpg.lambda_adv = config.fpg.lambda_adv if arg.akd else 0.0
    config.input.dataset = "hyperkvasir"
    config.input.image_root = "data/hyper-kvasir"
    config.input.fold = arg.fold
    config.input.val_fraction = arg.val
    config.eval.protocol = "val_test" if arg.val > 0 else "test_last"
    config.eval.head_min = 700
    config.eval.tail_max = 70
    config.teacher.update(dict(name=spec.name, artifact=spec.default_artifact, arch=spec.arch,
                               feature_key=spec.feature_key))
    if arg.runlocal:
        config.input.image_size = 28 if spec.family == "vit" else 32
        config.input.batch_size = 8
        config.input.eval_batch_size = 16
        config.student.width = 8
        config.student.stage_sizes = (1, 1, 1, 1)
        config.total_steps = 4
        config.eval_every_steps = 2
        config.log_every_steps = 1
    config.lock()
    return config
