"""Class probabilities of a trained student for a folder of images; optionally export the student.

    python launch/predict.py --workdir=workdirs/isic_ekd_f1 --images=my_images/ --out=predictions.csv
    python launch/predict.py --workdir=workdirs/isic_ekd_f1 --images=my_images/ --out=p.csv --export=student.npz
    python launch/predict.py --artifact=student.npz --images=my_images/ --out=predictions.csv

Images: *.jpg, *.jpeg, *.png in --images (sub-folders too with --recursive), decoded as RGB and resized to
the training size exactly like training (data.augment.resize_image). A file that cannot be read is listed,
skipped with a warning and written to <out>.skipped.csv; it never stops the run. The CSV has one line per
image: path (relative to --images), prediction, prediction name, p_<class> for every class.

--workdir rebuilds the run (config.json: dataset and method, so its data and teacher artifact must be
present) and restores --checkpoint; --export then writes the student alone (export.py: weights, BatchNorm
statistics, architecture, class names, input size; sha256 sidecar) which --artifact uses later without
the data, the teacher or the training code's state. Docs: docs/evaluation.md.
"""

import csv
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from foprokd_jax import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from PIL import Image  # noqa: E402

from foprokd_jax.data import augment  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def list_images(folder: str, recursive: bool = False) -> list:
    """Sorted image paths (by extension, case-insensitive) in `folder`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if recursive:
        paths = [os.path.join(d, name) for d, _, names in os.walk(folder) for name in names]
    else:
        paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    paths = sorted(p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {folder}")
    return paths


def load_images(paths, size: int):
    """(uint8 (N, size, size, 3), readable paths, [(path, reason)] of the skipped ones)."""
    images, kept, skipped = [], [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()  # PIL decodes lazily: a truncated file must fail here, not later
                images.append(np.asarray(augment.resize_image(image, size), np.uint8))
            kept.append(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = f"{type(e).__name__}: {e}"
            logging.warning("skipping unreadable image %s (%s)", path, reason)
            skipped.append((path, reason))
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept, skipped


def probs_from_run(run, images: np.ndarray) -> np.ndarray:
    """Probabilities from the run's own predict_step (global batches of its eval batch size, zero-padded)."""
    import jax

    from foprokd_jax import metrics, parallel

    if jax.process_count() > 1:
        raise ValueError("predicting a folder runs in one process; export the student and use --artifact")
    batch_size = run.config.input.eval_batch_size
    logits = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pad = batch_size - len(batch)
        padded = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], np.uint8)]) if pad else batch
        global_batch = parallel.host_batch_to_global({"image": padded}, run.mesh)
        logits.append(np.asarray(jax.device_get(run.parts.predict_step(run.state, global_batch)))[: len(batch)])
    return metrics.softmax(np.concatenate(logits)).astype(np.float32)


def write_csv(path: str, folder: str, paths, probs, class_names) -> str:
    predictions = np.argmax(probs, axis=1)
    with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "prediction_name"] + [f"p_{name}" for name in class_names])
        for image_path, prediction, row in zip(paths, predictions, probs):
            writer.writerow(
                [os.path.relpath(image_path, folder), int(prediction), class_names[int(prediction)]]
                + [f"{p:.6g}" for p in row]
            )
    os.replace(path + ".tmp", path)
    return path


def predict(
    images_dir: str,
    out_csv: str,
    workdir: str = None,
    artifact_path: str = None,
    checkpoint: str = "best",
    export_path: str = None,
    recursive: bool = False,
    restored=None,
) -> dict:
    """Everything the CLI does; returns {"csv", "probs", "paths", "skipped", "class_names", "export"}.

    `restored`: an `evaluation.RestoredRun` of `workdir` already in memory (skips rebuilding it).
    """
    if bool(workdir) == bool(artifact_path):
        raise ValueError("give exactly one of --workdir and --artifact")
    if export_path and not workdir:
        raise ValueError("--export needs --workdir (an artifact is already exported)")
    paths = list_images(images_dir, recursive)
    result = {"export": None}
    if workdir:
        from foprokd_jax import evaluation, export

        run = restored or evaluation.restore_run(workdir, checkpoint)
        class_names, size = list(run.dataset.class_names), int(run.config.input.image_size)
        images, kept, skipped = load_images(paths, size)
        probs = probs_from_run(run, images) if len(kept) else np.zeros((0, len(class_names)), np.float32)
        if export_path:
            result["export"] = export.export_student(export_path, run)
    else:
        from foprokd_jax import export

        module, variables, meta = export.load_student_with_meta(artifact_path)
        class_names, size = list(meta["class_names"]), int(meta["image_size"])
        images, kept, skipped = load_images(paths, size)
        probs = (
            export.predict_probs(module, variables, images)
            if len(kept)
            else np.zeros((0, len(class_names)), np.float32)
        )
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    write_csv(out_csv, images_dir, kept, probs, class_names)
    if skipped:
        with open(out_csv + ".skipped.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(skipped)
    result.update(csv=out_csv, probs=probs, paths=kept, skipped=skipped, class_names=class_names)
    return result


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs

    library_logs.quiet_library_logs()
    f = flags.FLAGS
    try:
        out = predict(f.images, f.out, f.workdir, f.artifact, f.checkpoint, f.export, f.recursive)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    print(f"{len(out['paths'])} images -> {out['csv']}")
    if out["skipped"]:
        print(f"{len(out['skipped'])} unreadable images skipped (listed in {out['csv']}.skipped.csv):")
        for path, reason in out["skipped"]:
            print(f"  {path}: {reason}")
    if out["export"]:
        print(f"student exported to {f.export} (sha256 {out['export']['sha256']})")


def _define_flags():
    # Defined only when run as a script, so tests can import this module next to other launchers.
    from absl import flags

    flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images.")
    flags.DEFINE_string("out", "predictions.csv", "CSV of class probabilities to write.")
    flags.DEFINE_string("workdir", None, "A trained run (launch/train.py workdir).")
    flags.DEFINE_string("artifact", None, "An exported student (.npz from --export).")
    flags.DEFINE_string("checkpoint", "best", "With --workdir: 'best', 'latest' or a step number.")
    flags.DEFINE_string("export", None, "With --workdir: also write the student as this standalone .npz.")
    flags.DEFINE_bool("recursive", False, "Also read images in sub-folders of --images.")
    flags.mark_flags_as_required(["images"])


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/predict.py`."""
    from absl import app

    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
