"""Throughput benchmark: full `bsm`, `ekd` and `fopro` train steps and the input pipeline (not a test).

    python launch/benchmark.py                         # 224 and 112, batch 32, ResNet-18 / MoCo R50 shapes
    python launch/benchmark.py --image_sizes=112 --steps=5 --out=bench.json

Reports compile time (first call) and steady-state img/s (median over --steps timed calls, after one
warm-up call) of the real step functions with full-size models (ResNet-18 student with the EKD heads,
ResNet-50 teacher with random weights, plus the FPG for fopro: speed does not depend on the values), on
all local devices.
The pipeline figure is img/s of the grain train iterator with the 'skin' augmentation on synthetic
images prepared at each size.
"""
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("image_sizes", ["224", "112"], "Square input sizes to benchmark.")
flags.DEFINE_list("methods", ["bsm", "ekd", "fopro"], "Methods whose train step is timed.")
flags.DEFINE_string("fpg_variant", "spectrum", "FPG variant for the 'fopro' step.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps per configuration (after compile + 1 warm-up).")
flags.DEFINE_integer("pipeline_batches", 8, "Batches drawn from the input pipeline per size.")
flags.DEFINE_integer("worker_count", 0, "grain worker processes for the pipeline benchmark.")
flags.DEFINE_string("out", "", "Optional JSON file for the results.")
FLAGS = flags.FLAGS


def bench_step(method, size, batch_size, steps):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ml_collections import ConfigDict
    from configs import isic
    from foprokd_jax import fopro_step, losses, parallel, steps as steps_lib
    from foprokd_jax.models import build
    from foprokd_jax.models.ekd_student import EKDStudent
    from foprokd_jax.models.resnet import resnet50
    from foprokd_jax.state import create_train_state, make_optimizer

    mesh = parallel.make_mesh()
    teacher = resnet50()
    dummy = jnp.zeros((1, size, size, 3))
    teacher_vars = teacher.init(jax.random.PRNGKey(1), dummy, train=False) if method != "bsm" else {}
    uses_teacher = method in ("ekd", "fopro")
    student = EKDStudent(num_classes=8, teacher_dim=2048 if uses_teacher else None,
                         bn_axis_name=parallel.DATA_AXIS)
    variables = jax.jit(lambda r: student.init(r, dummy, train=False))(jax.random.PRNGKey(0))
    optimizer = make_optimizer(ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8,
                                               weight_decay=0.0, clip_norm=5.0)))
    cls_loss = losses.make_classification_loss("bsm", np.arange(8, 0, -1))
    if method == "fopro":
        config = isic.get_config(f"method=fopro,fpg={FLAGS.fpg_variant}")
        prompt, head = build.prompt_from_config(config, 2048)
        fpg_params = build.init_prompt(prompt, head, 2048, size, jax.random.PRNGKey(2))
        state = create_train_state(variables, optimizer, fpg_params, optimizer)
        step = fopro_step.make_fopro_train_step(
            student=student, teacher=teacher, prompt=prompt, explore_head=head, cls_loss=cls_loss,
            optimizer=optimizer, fpg_optimizer=optimizer, free_u=3.0, lambda_cls=1.0, lambda_adv=1.0,
            lambda_reg=1e-3, teacher_feature_key="pre_logits", mesh=mesh)
    else:
        state = create_train_state(variables, optimizer)
        step = steps_lib.make_train_step(
            student=student, teacher=teacher if uses_teacher else None, cls_loss=cls_loss, optimizer=optimizer,
            method=method, free_u=3.0, teacher_feature_key="pre_logits", mesh=mesh)
    state = parallel.replicate(state, mesh)
    teacher_vars = parallel.replicate(teacher_vars, mesh)
    rng = np.random.default_rng(0)
    batch = parallel.host_batch_to_global(
        {"image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
         "label": rng.integers(0, 8, (batch_size,)).astype(np.int32)}, mesh)
    t0 = time.perf_counter()
    state, m = step(state, teacher_vars, batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    state, m = step(state, teacher_vars, batch)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, teacher_vars, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"method": method, "image_size": size, "batch_size": batch_size, "devices": mesh.devices.size,
            "compile_plus_first_step_s": round(compile_s, 2), "step_s": round(median, 4),
            "img_per_s": round(batch_size / median, 2)}


def bench_pipeline(size, batch_size, num_batches, worker_count):
    from foprokd_jax.data import isic_splits, pipeline, synthetic, tfds_isic
    root = os.path.join(tempfile.gettempdir(), "foprokd_bench_synthetic")
    split_dir = os.path.join(root, "splits")
    if not os.path.exists(os.path.join(split_dir, "train_skin1_0.01.csv")):
        synthetic.write_synthetic_isic(root, n_max=64, seed=0)
    t0 = time.perf_counter()
    store = tfds_isic.prepare_isic(root, os.path.join(root, "tfds"), size)
    prepare_s = time.perf_counter() - t0
    table = isic_splits.read_split(split_dir, "train", 1, "0.01")
    source = tfds_isic.IsicSplitSource(table, store)
    it = pipeline.make_train_iterator(source, batch_size, seed=0, worker_count=worker_count, augment=True)
    next(it)  # start-up (and worker spawn) excluded
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    elapsed = time.perf_counter() - t0
    return {"image_size": size, "batch_size": batch_size, "worker_count": worker_count,
            "prepare_s_(cached_after_first)": round(prepare_s, 2),
            "img_per_s": round(num_batches * batch_size / elapsed, 1)}


def main(argv):
    del argv
    import jax
    from foprokd_jax import logging_utils
    logging_utils.quiet_library_logs()
    print(f"JAX {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    results = {"steps": [], "pipeline": []}
    for size in map(int, FLAGS.image_sizes):
        for method in FLAGS.methods:
            r = bench_step(method, size, FLAGS.batch_size, FLAGS.steps)
            results["steps"].append(r)
            print(f"train step {method:4s} {size}px bs{r['batch_size']}: {r['img_per_s']:8.2f} img/s "
                  f"({r['step_s']:.3f} s/step; compile+first {r['compile_plus_first_step_s']:.1f} s)", flush=True)
        p = bench_pipeline(size, FLAGS.batch_size, FLAGS.pipeline_batches, FLAGS.worker_count)
        results["pipeline"].append(p)
        print(f"input pipeline {size}px (skin augmentation, {p['worker_count']} workers): "
              f"{p['img_per_s']:.1f} img/s", flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
