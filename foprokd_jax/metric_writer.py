"""Metric logging without TensorFlow: JSON lines + TensorBoard event files.

`MetricWriter` appends one JSON object per call to `workdir/metrics.jsonl` (big_vision style) and writes
the same scalars as TensorBoard events under `workdir/tb/`, using TensorBoard's own TF-free
`EventFileWriter` and protos, so `tensorboard --logdir workdir/tb` works with no TF installed
(clu's writers import TensorFlow; docs/performance.md lists what the training process imports).

Non-finite values in `metrics.jsonl`: JSON has no NaN/Infinity, so they are written as the strings
"nan", "inf" and "-inf" (the file stays valid JSON for any parser, and a crash log still tells NaN
from overflow). `read_metrics_jsonl` turns those strings back into floats. TensorBoard receives the
float itself.
"""

import json
import math
import os
import time
import warnings

import numpy as np

METRICS_FILENAME = "metrics.jsonl"
TEXT_FILENAME = "text.jsonl"
TENSORBOARD_SUBDIR = "tb"
_NONFINITE_TO_STRING = {math.inf: "inf", -math.inf: "-inf"}
_STRING_TO_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_python_number(name: str, value):
    """int/float from a python, numpy or jax scalar (size-1 arrays allowed); bools become ints."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"scalar '{name}' has shape {array.shape}; only single values can be logged")
    item = array.reshape(()).item()
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, (int, float)):
        return item
    raise TypeError(f"scalar '{name}' has non-numeric type {type(item).__name__}")


def _json_safe(value):
    """Non-finite floats as "nan"/"inf"/"-inf" strings so the line stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else _NONFINITE_TO_STRING[value]
    return value


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events in `workdir/tb/`.

    Pass `enabled=jax.process_index() == 0` on multi-host runs: a disabled writer touches no file and
    every method is a no-op. Usable as a context manager (closes on exit, also after an exception).
    """

    def __init__(self, workdir: str, enabled: bool = True, tb_flush_secs: int = 30):
        self.workdir = workdir
        self.enabled = enabled
        self._jsonl = None
        self._text = None
        self._events = None
        if not enabled:
            return
        # Imported lazily so that a disabled writer (non-zero processes) needs no TensorBoard at all.
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILENAME)
        # A crash can leave a half-written last line; start on a fresh line so that the resumed run's
        # first record is not glued onto it (read_metrics_jsonl skips the broken fragment).
        needs_newline = os.path.exists(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path)
        self._jsonl = open(path, "a", encoding="utf-8")
        if needs_newline:
            self._jsonl.write("\n")
        self._events = EventFileWriter(os.path.join(workdir, TENSORBOARD_SUBDIR), flush_secs=tb_flush_secs)

    def write_scalars(self, step: int, scalars: dict) -> None:
        """Appends `{"step": step, **scalars}` to metrics.jsonl (flushed now) and one TensorBoard event."""
        if not self.enabled:
            return
        if "step" in scalars:
            raise ValueError("'step' is reserved for the step number; rename that scalar")
        step = int(step)
        values = {str(name): _to_python_number(name, value) for name, value in scalars.items()}
        record = {"step": step, **{name: _json_safe(value) for name, value in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()  # line-by-line so that a crash loses nothing already reported

        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=name, simple_value=float(value)) for name, value in values.items()]
        )
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Text for TensorBoard's Text tab (markdown), also appended to `workdir/text.jsonl`."""
        if not self.enabled:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2

        if self._text is None:
            self._text = open(os.path.join(self.workdir, TEXT_FILENAME), "a", encoding="utf-8")
        self._text.write(json.dumps({"step": int(step), "tag": tag, "text": text}) + "\n")
        self._text.flush()
        # The text plugin reads a rank-0 DT_STRING tensor tagged with plugin_name "text".
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def write_images(self, step: int, images: dict) -> None:
        """TensorBoard image summaries (Images tab) plus PNG copies under `workdir/images/`.

        `images` maps tag -> uint8 array, HWC (C = 1, 3 or 4) or NHWC. An NHWC batch of N > 1 becomes
        tags `<tag>/0` .. `<tag>/N-1`. Each image is PNG-encoded with Pillow into a `Summary.Image`
        (TensorBoard's own proto, no TF) and saved as `images/<tag>_<step>[_<i>].png`, with "/" and other
        unsafe characters in the tag replaced by "_".
        """
        if not self.enabled:
            return
        import io
        import re

        from PIL import Image
        from tensorboard.compat.proto import event_pb2, summary_pb2

        image_dir = os.path.join(self.workdir, "images")
        os.makedirs(image_dir, exist_ok=True)
        values = []
        for tag, array in images.items():
            array = np.asarray(array)
            if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] not in (1, 3, 4):
                raise ValueError(
                    f"image '{tag}' must be uint8 HWC or NHWC with 1, 3 or 4 channels; got {array.dtype} {array.shape}"
                )
            batch = array[None] if array.ndim == 3 else array
            for index, image in enumerate(batch):
                suffix = f"_{index}" if len(batch) > 1 else ""
                buffer = io.BytesIO()
                Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
                encoded = buffer.getvalue()
                filename = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', tag)}_{int(step)}{suffix}.png"
                with open(os.path.join(image_dir, filename), "wb") as f:
                    f.write(encoded)
                summary_image = summary_pb2.Summary.Image(
                    height=image.shape[0], width=image.shape[1], colorspace=image.shape[2], encoded_image_string=encoded
                )
                values.append(
                    summary_pb2.Summary.Value(tag=f"{tag}/{index}" if len(batch) > 1 else tag, image=summary_image)
                )
        self._events.add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
        )

    def write_hparams(self, hparams: dict) -> None:
        """Writes the run's (flat or nested) hyperparameters to `workdir/hparams.json`."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, "hparams.json"), "w", encoding="utf-8") as f:
            json.dump(hparams, f, indent=2, sort_keys=True, default=str)

    def flush(self) -> None:
        if not self.enabled:
            return
        self._jsonl.flush()
        if self._text is not None:
            self._text.flush()
        self._events.flush()

    def close(self) -> None:
        """Flushes and closes everything; safe to call twice."""
        if not self.enabled or self._jsonl is None:
            return
        self._jsonl.close()
        if self._text is not None:
            self._text.close()
        self._events.close()
        self._jsonl = self._text = self._events = None
        self.enabled = False

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_metrics_jsonl(path: str) -> list:
    """Reads metrics.jsonl back as a list of dicts, one per line, in file order.

    Lines that are not valid JSON objects (a crash mid-write truncates the last line) are skipped with a
    warning. The strings "nan"/"inf"/"-inf" written for non-finite values become floats again. A resumed
    run may repeat steps; all records are returned, so callers decide (e.g. keep the last per step).
    """
    records = []
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    last_content_line = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            where = "last line" if line_number == last_content_line else "line"
            warnings.warn(
                f"{path}: skipping unreadable {where} {line_number} "
                f"(probably truncated by a crash): {error}; content {line[:80]!r}"
            )
            continue
        records.append(
            {
                key: _STRING_TO_NONFINITE.get(value, value) if isinstance(value, str) else value
                for key, value in record.items()
            }
        )
    return records
