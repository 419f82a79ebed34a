"""Frequency preferences of a frozen teacher: low-/high-pass sweep with feature drift and linear probes.

    python launch/analyze_frequency.py --teacher_artifact=teachers/moco_v2_r50.npz --teacher_arch=resnet50 \\
        --image_root=data/isic2019 --split_dir=data/isic2019/splits --prepared_dir=data/tfds \\
        --fold=1 --imb=0.01 --out_dir=workdirs/frequency_moco
    python launch/analyze_frequency.py --demo      # synthetic data + random demo teacher, 32 px, < 1 min on CPU

For every cut-off radius (1 = Nyquist along an axis, see foprokd_jax/frequency.py) and filter
kind, the train and the evaluation images are filtered identically and embedded by the teacher; the
tool reports the mean cosine between filtered and unfiltered evaluation features and the balanced
accuracy of a class-balanced linear probe trained on the filtered train features. Writes
<out_dir>/frequency_sweep.csv and frequency_sweep.png and prints the table.

Cost: (1 + kinds x radii) teacher passes over the capped train set and the evaluation split, e.g.
15 x (800 + 800) ResNet-50 forwards at 224 px with the defaults; use --max_train_per_class and
--max_eval_per_class to bound it on a CPU. The demo's teacher is random, so its curves only show that
the tool runs; they say nothing about pretrained teachers.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from foprokd_jax import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("teacher_artifact", "teachers/moco_v2_r50.npz", "Converted teacher (.npz + .json sidecar).")
flags.DEFINE_string("teacher_arch", "resnet50", "Architecture the artifact must declare.")
flags.DEFINE_string("feature_key", "pre_logits", "Teacher output to analyse.")
flags.DEFINE_string("image_root", "data/isic2019", "Folder holding ISIC_2019_Training_Input/.")
flags.DEFINE_string("split_dir", "data/isic2019/splits", "Folder of {train,val,test}_skin{fold}_{imb}.csv.")
flags.DEFINE_string("prepared_dir", "data/tfds", "tfds data_dir of the resized copy (made once).")
flags.DEFINE_integer("fold", 1, "Split fold (1..5).")
flags.DEFINE_string("imb", "0.01", "Imbalance factor as in the CSV names.")
flags.DEFINE_enum("eval_split", "test", ["val", "test"], "Split the probe is evaluated on.")
flags.DEFINE_integer("image_size", 224, "Square size the images are resized to.")
flags.DEFINE_integer("max_train_per_class", 100, "Cap of train images per class (0 = all).")
flags.DEFINE_integer("max_eval_per_class", 0, "Cap of evaluation images per class (0 = all).")
flags.DEFINE_list(
    "radii", ["0.05", "0.1", "0.2", "0.3", "0.5", "0.7", "1.0"], "Cut-off radii, fractions of the Nyquist frequency."
)
flags.DEFINE_list("kinds", ["lowpass", "highpass"], "Filter kinds to sweep.")
flags.DEFINE_integer("batch_size", 64, "Teacher batch size.")
flags.DEFINE_integer("probe_steps", 300, "Full-batch Adam steps of the linear probe.")
flags.DEFINE_float("probe_lr", 0.05, "Linear-probe learning rate.")
flags.DEFINE_float("probe_l2", 1e-3, "Linear-probe L2 weight.")
flags.DEFINE_integer("seed", 0, "Seed of the per-class subsampling.")
flags.DEFINE_string("out_dir", "workdirs/frequency_analysis", "Where the CSV, PNG and JSON go.")
flags.DEFINE_bool(
    "demo",
    False,
    "Use a small synthetic ISIC-layout dataset under data/synthetic_isic_frequency "
    "and configs/demo.py's random demo teacher (both made once if missing) at 32 px; data and "
    "teacher flags set explicitly still win.",
)
FLAGS = flags.FLAGS

_DEMO_OVERRIDABLE = (
    "teacher_artifact",
    "teacher_arch",
    "image_root",
    "split_dir",
    "prepared_dir",
    "fold",
    "imb",
    "image_size",
    "max_train_per_class",
)


# The demo's own small dataset (227 images): configs/demo.py's 636-image set would be reused if it
# existed, but a separate root keeps the two demos from ever reading each other's differently sized data.
DEMO_ROOT = "data/synthetic_isic_frequency"
DEMO_DATA = dict(
    n_max=48, val_per_class=4, test_per_class=10, image_sizes=((64, 48), (48, 48)), folds=(1,), imbs=("0.01",)
)


def _apply_demo_defaults() -> None:
    """Points unset flags at the demo data and teacher, generating them if they do not exist yet.

    The teacher is configs/demo.py's random demo teacher (the one the training demo distils from).
    """
    from configs import demo as demo_config
    from foprokd_jax import demo

    config = demo_config.get_config()
    config.unlock()
    inp = config.input
    for name, value in (
        ("image_root", DEMO_ROOT),
        ("split_dir", os.path.join(DEMO_ROOT, "splits")),
        ("prepared_dir", os.path.join(DEMO_ROOT, "tfds")),
        ("fold", 1),
        ("imb", "0.01"),
        ("image_size", inp.image_size),
        ("teacher_artifact", config.teacher.artifact),
        ("teacher_arch", config.teacher.arch),
        ("max_train_per_class", 24),
    ):
        if not FLAGS[name].present:
            setattr(FLAGS, name, value)
    # ensure_* read the config, so it must carry the values actually used.
    inp.image_root, inp.split_dir, inp.prepared_dir = FLAGS.image_root, FLAGS.split_dir, FLAGS.prepared_dir
    inp.fold, inp.imb, inp.image_size = FLAGS.fold, FLAGS.imb, FLAGS.image_size
    config.teacher.artifact, config.teacher.arch = FLAGS.teacher_artifact, FLAGS.teacher_arch
    config.demo_data = dict(DEMO_DATA, folds=(FLAGS.fold,), imbs=(FLAGS.imb,))
    demo.ensure_synthetic_data(config)
    demo.ensure_demo_teacher(config)


def _subsample(labels, cap: int, seed: int):
    """Indices of at most `cap` examples per class (all if cap <= 0), a seeded random choice, sorted."""
    import numpy as np

    if cap <= 0:
        return np.arange(len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    keep = np.concatenate([order[labels[order] == c][:cap] for c in np.unique(labels)])
    return np.sort(keep)


def _load_split(split: str, store, cap: int, seed: int):
    import numpy as np

    from foprokd_jax.data import isic_splits, tfds_isic

    table = isic_splits.read_split(FLAGS.split_dir, split, FLAGS.fold, FLAGS.imb)
    source = tfds_isic.IsicSplitSource(table, store)
    indices = _subsample(source.labels, cap, seed)
    images = np.stack([source[int(i)]["image"] for i in indices])
    return images, source.labels[indices]


def sweep_teacher() -> list:
    import numpy as np

    from foprokd_jax.data import isic_splits, tfds_isic
    from foprokd_jax.methods.fopro import frequency_analysis as fa
    from foprokd_jax.models.build import teacher_from_artifact

    # Flag values are checked before anything slow runs.
    try:
        radii = [float(r) for r in FLAGS.radii]
    except ValueError:
        raise ValueError(f"--radii must be numbers, got {FLAGS.radii}") from None
    unknown = [k for k in FLAGS.kinds if k not in fa.KINDS]
    if unknown or not radii or any(not r >= 0 for r in radii):
        raise ValueError(
            f"--kinds must be from {fa.KINDS} (got {FLAGS.kinds}) and --radii non-empty and >= 0 (got {FLAGS.radii})"
        )
    if FLAGS.demo:
        _apply_demo_defaults()
    # The teacher first: a wrong path or arch fails in a second, before any image is decoded.
    module, variables, record = teacher_from_artifact(
        FLAGS.teacher_artifact, FLAGS.teacher_arch, image_size=FLAGS.image_size
    )
    store = tfds_isic.prepare_isic(FLAGS.image_root, FLAGS.prepared_dir, FLAGS.image_size)
    train_images, train_labels = _load_split("train", store, FLAGS.max_train_per_class, FLAGS.seed)
    eval_images, eval_labels = _load_split(FLAGS.eval_split, store, FLAGS.max_eval_per_class, FLAGS.seed + 1)
    num_classes = isic_splits.NUM_CLASSES
    logging.info(
        "teacher %s (%s, %d-d); %d train images %s, %d %s images, %d px",
        record["artifact"],
        record["arch"],
        record["feature_dim"],
        len(train_labels),
        np.bincount(train_labels, minlength=num_classes).tolist(),
        len(eval_labels),
        FLAGS.eval_split,
        FLAGS.image_size,
    )

    rows = fa.frequency_sweep(
        module,
        variables,
        train_images,
        train_labels,
        eval_images,
        eval_labels,
        radii=radii,
        kinds=tuple(FLAGS.kinds),
        feature_key=FLAGS.feature_key,
        batch_size=FLAGS.batch_size,
        num_classes=num_classes,
        probe_steps=FLAGS.probe_steps,
        probe_lr=FLAGS.probe_lr,
        probe_l2=FLAGS.probe_l2,
        log=logging.info,
    )
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    csv_path = fa.write_sweep_csv(rows, os.path.join(FLAGS.out_dir, "frequency_sweep.csv"))
    title = (
        f"{os.path.basename(FLAGS.teacher_artifact)} ({record['arch']}, {FLAGS.feature_key}), "
        f"ISIC fold {FLAGS.fold} imb {FLAGS.imb}, {FLAGS.image_size} px, "
        f"{len(train_labels)} train / {len(eval_labels)} {FLAGS.eval_split}"
    )
    png_path = fa.plot_frequency_sweep(
        rows, os.path.join(FLAGS.out_dir, "frequency_sweep.png"), title=title, chance=1.0 / num_classes
    )
    with open(os.path.join(FLAGS.out_dir, "frequency_sweep.json"), "w") as f:
        json.dump(
            {
                "teacher": record,
                "flags": {
                    name: FLAGS[name].value
                    for name in _DEMO_OVERRIDABLE
                    + (
                        "radii",
                        "kinds",
                        "eval_split",
                        "max_eval_per_class",
                        "feature_key",
                        "probe_steps",
                        "probe_lr",
                        "probe_l2",
                        "seed",
                        "demo",
                    )
                },
                "rows": [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in rows],
            },
            f,
            indent=2,
        )
    print(f"\nTeacher frequency sweep ({title}):")
    print(fa.format_sweep_table(rows))
    print(f"\nWrote {csv_path} and {png_path}")
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs

    library_logs.quiet_library_logs()
    try:
        sweep_teacher()
    except (FileNotFoundError, ValueError, KeyError) as e:
        # Bad input (missing file, wrong arch, bad split/radius): one clear line and exit 1; anything
        # else is a bug and keeps its traceback.
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/analyze_frequency.py`."""
    app.run(main)


if __name__ == "__main__":
    run()
