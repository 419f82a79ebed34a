"""Grad-CAM and Grad-CAM++ heat maps of a trained student over chosen images or its worst-classified test images.

    python launch/explain.py --workdir=workdirs/isic_ekd_f1 --worst_per_class=3            # test split, best ckpt
    python launch/explain.py --workdir=workdirs/isic_ekd_f1 --images=my_images/ --out_dir=/tmp/cams
    python launch/explain.py --artifact=student.npz --images=my_images/ --out_dir=/tmp/cams

The maps are computed in JAX (foprokd_jax/explain.py) at the student's last convolutional stage (the last
block of its last ResNet stage, `trunk/layer4_1` for ResNet-18; --layer picks another module path) for the
predicted class (--target=predicted) or, for dataset images, the true class (--target=label).
--worst_per_class=k scores the whole --split and explains, per class, the k images with the lowest
probability of their true class. --images explains every *.jpg/*.jpeg/*.png in a folder, resized like
training. Writes into --out_dir (default <workdir>/explain/<split or images>_step<step>, or ./explain for an
artifact): one PNG per image (input | Grad-CAM overlay | Grad-CAM++ overlay), explanations.csv, maps.npz (the
maps at input resolution) and TensorBoard images (tb/, with PNG copies under images/) tagged
gradcam/<image> and gradcam_pp/<image> at the checkpoint's step.
"""

import csv
import os
import sys

import numpy as np
from absl import app, flags, logging

TARGETS = ("predicted", "label")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _list_images(folder: str) -> list:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(
        os.path.join(folder, n)
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
    )
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {folder}")
    return paths


def _load_images(paths, size: int):
    """uint8 (N, size, size, 3) resized like training (data.augment.resize_image), and the readable paths."""
    from PIL import Image

    from foprokd_jax.data import augment

    images, kept = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(np.asarray(augment.resize_image(image, size), np.uint8))
            kept.append(path)
        except (OSError, SyntaxError, ValueError) as e:
            logging.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
    if not images:
        raise ValueError(f"none of the {len(paths)} images could be read")
    return np.stack(images), kept


def _check_arguments(workdir, artifact, images_dir, worst_per_class, target, image_weight, batch_size):
    """Every bad combination is refused before anything is loaded or written."""
    if bool(workdir) == bool(artifact):
        raise ValueError("give exactly one of --workdir and --artifact")
    if bool(images_dir) == (worst_per_class > 0):
        raise ValueError("give exactly one of --images and --worst_per_class")
    if worst_per_class < 0:
        raise ValueError(f"--worst_per_class must be >= 0, got {worst_per_class}")
    if worst_per_class and not workdir:
        raise ValueError("--worst_per_class needs --workdir (the dataset's labels)")
    if target == "label" and images_dir:
        raise ValueError("--target=label needs labelled images: use --worst_per_class")
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {TARGETS}, got {target!r}")
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"--image_weight must lie in [0, 1], got {image_weight}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")


def _safe_name(text) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def explain(
    out_dir=None,
    workdir=None,
    artifact=None,
    checkpoint="best",
    images_dir=None,
    split="test",
    worst_per_class=0,
    target="predicted",
    layer="",
    image_weight=0.5,
    batch_size=16,
    restored=None,
) -> dict:
    """Everything the CLI does; returns {"out_dir", "rows", "maps", "target_path", "files"}.

    `restored`: an `evaluation.RestoredRun` of `workdir` already in memory (skips rebuilding it).
    """
    _check_arguments(workdir, artifact, images_dir, worst_per_class, target, image_weight, batch_size)
    import jax

    from foprokd_jax import evaluation, export, metric_writer, metrics, plots
    from foprokd_jax import explain as cams

    labels = None
    if workdir:
        run = restored or evaluation.restore_run(workdir, checkpoint)
        spec = export.student_spec(run)
        module = export.InferenceStudent(spec.module, spec.logits_key)
        variables = jax.tree.map(np.asarray, jax.device_get(spec.variables(run.state)))
        class_names, size, step = list(run.dataset.class_names), int(run.config.input.image_size), int(run.step)
        if worst_per_class:
            if split not in run.dataset.sources:
                raise ValueError(f"split {split!r} is not in {run.dataset.name} (has {sorted(run.dataset.sources)})")
            source = run.dataset.sources[split]
            logits, split_labels = evaluation.predict_split(
                run.parts.predict_step, run.state, source, run.config.input.eval_batch_size, run.mesh
            )
            chosen = cams.worst_classified(metrics.softmax(logits), split_labels, worst_per_class)
            images = np.stack([np.asarray(source[int(i)]["image"], np.uint8) for i in chosen])
            labels = split_labels[chosen]
            ids = run.dataset.ids.get(split)
            ids = [str(ids[i]) if ids is not None and len(ids) == len(source) else str(i) for i in chosen]
        default_out = os.path.join(workdir, "explain", f"{split if worst_per_class else 'images'}_step{step}")
    else:
        module, variables, meta = export.load_student_with_meta(artifact)
        class_names, size, step = (
            list(meta["class_names"]),
            int(meta["image_size"]),
            int(meta.get("checkpoint_step", 0)),
        )
        default_out = "explain"
    if images_dir:
        images, paths = _load_images(_list_images(images_dir), size)
        ids = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    target_path = tuple(layer.split("/")) if layer else cams.last_stage_path(module, variables, images[:1])
    requested = labels if target == "label" else np.full(len(images), -1)

    maps = {method: [] for method in cams.METHODS}
    logits, classes = [], []
    for start in range(0, len(images), batch_size):
        batch, wanted = images[start : start + batch_size], requested[start : start + batch_size]
        pad = batch_size - len(batch) if len(images) > batch_size else 0  # one compiled shape for every batch
        if pad:
            batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], np.uint8)])
            wanted = np.concatenate([wanted, np.full(pad, -1)])
        out = cams.class_activation_maps(module, variables, batch, target_path, wanted)
        keep = len(batch) - pad
        for method in cams.METHODS:
            maps[method].append(out[method][:keep])
        logits.append(out["logits"][:keep])
        classes.append(out["classes"][:keep])
    maps = {method: np.concatenate(values) for method, values in maps.items()}
    probs = metrics.softmax(np.concatenate(logits))
    classes = np.concatenate(classes)

    out_dir = out_dir or default_out
    rows, files = [], []
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        tb_images = {}
        for i, image_id in enumerate(ids):
            prediction = int(np.argmax(probs[i]))
            overlays = {method: cams.overlay(images[i], maps[method][i], image_weight) for method in cams.METHODS}
            head = f"{image_id}: " + (f"true {class_names[int(labels[i])]}, " if labels is not None else "")
            head += f"predicted {class_names[prediction]} ({probs[i, prediction]:.2f})"
            target_name = class_names[int(classes[i])]
            path = os.path.join(out_dir, f"{i:03d}_{_safe_name(image_id)}.png")
            plots.plot_image_panels(
                [
                    ("input", images[i]),
                    (f"Grad-CAM: {target_name}", overlays["gradcam"]),
                    (f"Grad-CAM++: {target_name}", overlays["gradcam_pp"]),
                ],
                path,
                title=head,
            )
            files.append(path)
            for method in cams.METHODS:
                tb_images[f"{method}/{i:03d}_{_safe_name(image_id)}"] = overlays[method]
            rows.append(
                {
                    "index": i,
                    "image_id": image_id,
                    "label": "" if labels is None else int(labels[i]),
                    "label_name": "" if labels is None else class_names[int(labels[i])],
                    "prediction": prediction,
                    "prediction_name": class_names[prediction],
                    "target": int(classes[i]),
                    "target_name": target_name,
                    "p_target": float(probs[i, int(classes[i])]),
                    "png": os.path.basename(path),
                }
            )
        with open(os.path.join(out_dir, "explanations.csv.tmp"), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(os.path.join(out_dir, "explanations.csv.tmp"), os.path.join(out_dir, "explanations.csv"))
        np.savez(os.path.join(out_dir, "maps.npz"), image_ids=np.asarray(ids), classes=classes, **maps)
        with metric_writer.MetricWriter(out_dir) as writer:
            writer.write_text(step, "explain/target_layer", "/".join(target_path))
            writer.write_images(step, tb_images)
    return {
        "out_dir": out_dir,
        "rows": rows,
        "maps": maps,
        "target_path": target_path,
        "files": files,
        "images": images,
        "classes": classes,
        "probs": probs,
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from foprokd_jax import library_logs

    library_logs.quiet_library_logs()
    f = flags.FLAGS
    try:
        out = explain(
            f.out_dir,
            f.workdir,
            f.artifact,
            f.checkpoint,
            f.images,
            f.split,
            f.worst_per_class,
            f.target,
            f.layer,
            f.image_weight,
            f.batch_size,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    print(f"{len(out['rows'])} images explained at {'/'.join(out['target_path'])} -> {out['out_dir']}")
    for row in out["rows"]:
        print(
            f"  {row['png']}: target {row['target_name']} (p {row['p_target']:.3f}), predicted "
            f"{row['prediction_name']}" + (f", true {row['label_name']}" if row["label_name"] != "" else "")
        )


def _define_flags():
    # Defined only when run as a program, so tests can import this module next to other command-line tools.
    flags.DEFINE_string("workdir", None, "A trained run (launch/train.py workdir).")
    flags.DEFINE_string("artifact", None, "An exported student (launch/predict.py --export).")
    flags.DEFINE_string("checkpoint", "best", "With --workdir: 'best', 'latest' or a step number.")
    flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images to explain.")
    flags.DEFINE_string("split", "test", "With --worst_per_class: the dataset split to search.")
    flags.DEFINE_integer(
        "worst_per_class",
        0,
        "Explain the k images of every class with the lowest probability "
        "of their true class in --split (needs --workdir).",
    )
    flags.DEFINE_enum("target", "predicted", TARGETS, "Class whose logit is explained.")
    flags.DEFINE_string(
        "layer", "", "Module path of the target layer, e.g. trunk/layer3_1 (default: the last block of the last stage)."
    )
    flags.DEFINE_string("out_dir", None, "Output folder.")
    flags.DEFINE_float("image_weight", 0.5, "Weight of the image in the overlay, in [0, 1].")
    flags.DEFINE_integer("batch_size", 16, "Images per forward/backward pass.")


def run():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from foprokd_jax import xla_flags

    xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)
    _define_flags()
    app.run(main)
