"""`MethodParts`: the contract between a method and the method-agnostic training loop (`foprokd_jax/train.py`)."""

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
    export_student: the evaluated network as `export.StudentSpec` (what `launch/predict.py --export` writes).
    """

    state: Any
    frozen: Any
    train_step: Callable
    predict_step: Callable
    train_iterator: Any
    meta: dict = dataclasses.field(default_factory=dict)
    on_eval: Optional[Callable] = None
    # export.StudentSpec(module, state -> variables, logits key) of the deployable network, for
    # launch/predict.py --export.
    export_student: Optional[Any] = None
