"""Demo: BSM vs EKD vs FoPro-KD end to end on a small synthetic dataset in the official ISIC-2019-LT layout.

Command (the default of launch/train.py; a few minutes on a 2-core CPU):

    python launch/train.py                                  # = --config=configs/demo.py
    python launch/train.py --config=configs/demo.py --workdir=workdirs/demo

What it does: writes synthetic JPEGs + split CSVs in the official layout under data/synthetic_isic (once),
prepares the tfds array_record copy (once), writes a demo teacher artifact (once), then trains the BSM
baseline, EKD and FoPro-KD with identical settings into <workdir>/{bsm,ekd,fopro}, and prints a comparison
table (also <workdir>/comparison.json and comparison.png).

Honesty note: real MoCo-v2 weights cannot be downloaded offline, so the demo teacher is a randomly
initialised small ResNet saved in the real artifact format. The demo exercises the whole pipeline
(data, teacher loading, distillation, checkpoints, selection, report); it says nothing about how much a
pretrained teacher helps, and FoPro-KD's FPG/AKD are a reconstruction (docs/fpg.md). Expected result:
all three well above chance (1/8 = 0.125 balanced accuracy) on the synthetic test split; the exact
numbers depend on the machine's floating point.
"""

from configs import common

DEMO_METHODS = ("bsm", "ekd", "fopro")


def get_config(arg=None):
    arg = common.parse_arg(arg, methods="bsm+ekd+fopro", steps=240)
    unknown = sorted(set(arg.methods.split("+")) - set(DEMO_METHODS))
    if unknown:
        raise ValueError(f"methods: the demo compares {'+'.join(DEMO_METHODS)} (any subset), not {unknown}")
    # FoPro-KD's keys hold those of EKD and BSM; each method's run keeps only its own (foprokd_jax/demo.py).
    config = common.method_config("fopro")
    config.name = "demo"
    config.demo = True
    config.demo_methods = arg.methods  # '+'-separated list of methods to train and compare
    # Synthetic data: head class 200 train images, 10 val / 20 test per class, ISIC-like JPEG sizes.
    config.demo_data = dict(
        n_max=200, val_per_class=10, test_per_class=20, image_sizes=((300, 225), (256, 256)), folds=(1,), imbs=("0.01",)
    )
    config.input.image_root = "data/synthetic_isic"
    config.input.split_dir = "data/synthetic_isic/splits"
    config.input.prepared_dir = "data/synthetic_isic/tfds"
    config.input.imb = "0.01"
    config.input.image_size = 32
    config.input.batch_size = 32
    config.input.eval_batch_size = 64
    config.student.width = 16
    config.student.stage_sizes = (1, 1, 1, 1)
    config.teacher.name = "demo_random_resnet"
    config.teacher.artifact = "data/synthetic_isic/demo_teacher.npz"
    config.teacher.arch = "demo_random_resnet"
    # The synthetic train split has ~400 images (head class 200); group thresholds scaled to match.
    config.eval.head_min = 50
    config.eval.tail_max = 10
    config.total_steps = arg.steps
    config.eval_every_steps = 24
    config.log_every_steps = 24
    config.lock()
    return config
