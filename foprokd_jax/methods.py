"""Method registry: each training method builds its state, compiled steps and data stream behind one interface.

`train.train_and_evaluate` is method-agnostic: it asks `build_method(config, mesh, dataset, steps_per_epoch)`
for a `MethodParts` and runs the loop (checkpoints, evaluation, logging) around it. A method lives in its own
module and registers a builder here, so adding one never touches the training loop.
"""
import dataclasses
from typing import Any, Callable, Optional


@dataclasses.dataclass
class MethodParts:
    """Everything the training loop needs from a method.

    state: pytree with a `.step` int32 scalar (optimizer steps taken), replicated on the mesh; checkpointed.
    frozen: pytree passed to `train_step` unchanged (frozen teacher variables), replicated; never checkpointed.
    train_step: `(state, frozen, batch) -> (state, metrics)`, compiled data-parallel; `batch` is a dict of
        global arrays sharded along 'data' as produced by `train_iterator` (through
        `parallel.host_batch_to_global`); metrics: dict of scalars including 'loss'.
    predict_step: `(state, batch) -> logits` float32 (B, num_classes), global and sharded along 'data', of the
        model that is evaluated (the student). `batch['image']` is uint8 (B, S, S, 3) from the eval batches.
    train_iterator: endless, checkpointable (`get_state`/`set_state`) iterator of per-process host batches.
    meta: JSON-able facts for config.json/results.json (teacher artifact and sha256, ...).
    on_eval: optional `(writer, step, state, dataset) -> None` run on the chief after each evaluation
        (e.g. FoPro-KD's prompt images).
    export_student: see below.
    """
    state: Any
    frozen: Any
    train_step: Callable
    predict_step: Callable
    train_iterator: Any
    meta: dict = dataclasses.field(default_factory=dict)
    on_eval: Optional[Callable] = None
    # export.StudentSpec(module, state -> variables, logits key) of the deployable student, for
    # launch/predict.py --export; None falls back to export.FALLBACK_STUDENTS (bsm/ekd/fopro).
    export_student: Optional[Any] = None


# name -> "module:function" of a builder `(config, mesh, dataset, steps_per_epoch) -> MethodParts`. Imported
# lazily so that a method's dependencies load only when it is used.
BUILDERS = {
    "bsm": "foprokd_jax.kd_methods:build_kd_method",
    "ekd": "foprokd_jax.kd_methods:build_kd_method",
    "fopro": "foprokd_jax.kd_methods:build_kd_method",
    "crckd": "foprokd_jax.crckd.method:build_crckd",
}


def method_names() -> tuple:
    return tuple(sorted(BUILDERS))


def build_method(config, mesh, dataset, steps_per_epoch: int) -> MethodParts:
    import importlib

    if config.method not in BUILDERS:
        raise ValueError(f"config.method={config.method!r} is not one of {method_names()}")
    module_name, function_name = BUILDERS[config.method].split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(config, mesh, dataset, steps_per_epoch)
