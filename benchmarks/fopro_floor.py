"""The analytic floor of the FoPro-KD step against the EKD step, from XLA's cost analysis (issue 18 part 3).

    python -m benchmarks.fopro_floor --size=224 --batch=32             # uncompiled HLO: seconds, no compile
    python -m benchmarks.fopro_floor --size=224 --batch=32 --compiled  # the CPU-compiled programs (minutes)

With the every-step FPG, FoPro-KD's step is the EKD step with the teacher fed the prompted image, plus what only
the FPG needs: the gradient of the FPG objective with respect to the teacher's INPUT (a backward pass through the
frozen teacher without weight gradients), the prompt's FFTs and the explore head (methods/fopro/step.py). So

    floor = FLOPs(FoPro-KD step) / FLOPs(EKD step),  and  FLOPs(FoPro) - FLOPs(EKD) ~ FLOPs(teacher dX)

is the step-time ratio FoPro-KD / EKD would have if every FLOP ran at the EKD step's average rate. This prints
the FLOPs of: the EKD and FoPro-KD steps (benchmarks/jax_steps.py, full size), the teacher's forward on one batch,
and the teacher's forward + input gradient (jax.vjp with respect to the image), hence the input gradient alone.
XLA counts a multiply-add as 2 FLOPs. Numbers: docs/performance.md §3.
"""

import json

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The CLI's flags, defined only when run as a script: tests import this module beside benchmarks/benchmark.py,
    which defines --out in absl's global table too."""
    flags.DEFINE_integer("size", 224, "Input size.")
    flags.DEFINE_integer("batch", 32, "Global batch size.")
    flags.DEFINE_bool("compiled", False, "Cost analysis of the CPU-compiled programs instead of the lowered HLO.")
    flags.DEFINE_string("out", "", "Optional JSON file for the figures.")


def flops(jitted, *args, compiled: bool) -> float:
    """XLA's FLOP count of `jitted(*args)`: of the lowered (unoptimised) HLO, or of the compiled program."""
    lowered = jitted.lower(*args)
    cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def teacher_costs(teacher_vars, size: int, batch: int, compiled: bool) -> dict:
    """FLOPs of the ResNet-50 teacher's forward and of forward + gradient with respect to its input."""
    import jax
    import jax.numpy as jnp

    from foprokd_jax.models.resnet import resnet50

    teacher = resnet50()
    x = jnp.zeros((batch, size, size, 3), jnp.float32)

    def forward(variables, images):
        return teacher.apply(variables, images, train=False)["pre_logits"]

    def forward_and_input_grad(variables, images):
        features, vjp = jax.vjp(lambda im: forward(variables, im), images)
        return features, vjp(jnp.ones_like(features))[0]

    fwd = flops(jax.jit(forward), teacher_vars, x, compiled=compiled)
    both = flops(jax.jit(forward_and_input_grad), teacher_vars, x, compiled=compiled)
    return {"teacher_forward": fwd, "teacher_forward_and_input_grad": both, "teacher_input_grad": both - fwd}


def measure(size: int, batch: int, compiled: bool) -> dict:
    from benchmarks import jax_steps

    figures = {}
    for method in ("ekd", "fopro"):
        built = jax_steps.build_step(method, size, batch, num_devices=1)
        figures[f"{method}_step"] = flops(built.step, *built.args(), compiled=compiled)
        teacher_vars = built.teacher_vars
    figures.update(teacher_costs(teacher_vars, size, batch, compiled))
    extra = figures["fopro_step"] - figures["ekd_step"]
    figures.update(
        floor_fopro_over_ekd=figures["fopro_step"] / figures["ekd_step"],
        fopro_extra=extra,
        fopro_extra_over_teacher_input_grad=extra / figures["teacher_input_grad"],
        teacher_input_grad_over_forward=figures["teacher_input_grad"] / figures["teacher_forward"],
        teacher_input_grad_over_ekd_step=figures["teacher_input_grad"] / figures["ekd_step"],
    )
    return figures


def main(argv):
    del argv
    if FLAGS.size < 32 or FLAGS.batch < 1:
        raise app.UsageError("--size must be >= 32 and --batch >= 1")
    figures = measure(FLAGS.size, FLAGS.batch, FLAGS.compiled)
    source = "compiled (XLA:CPU)" if FLAGS.compiled else "lowered HLO"
    print(f"{FLAGS.size} px, batch {FLAGS.batch}, FLOPs from the {source}:")
    for key, value in figures.items():
        print(f"  {key}: {value / 1e9:.1f} GFLOP" if value > 1e6 else f"  {key}: {value:.3f}")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(dict(size=FLAGS.size, batch=FLAGS.batch, source=source, **figures), f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
