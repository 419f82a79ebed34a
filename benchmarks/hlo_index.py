"""A small reader for XLA's optimized HLO text: what each instruction is, for grouping profile time.

`classify(hlo_text, batch_per_device)` maps every instruction name of a compiled module (the names the
XLA:CPU profiler reports as `hlo_op`) to a category such as 'conv dX student [Eigen]' or 'fusion
(BN/elementwise/reduce)'. Convolutions are split by
* direction: forward, or from the backward pass (`transpose(` in JAX's op_name metadata); a backward conv
  is the input gradient dX when its lhs batch dimension has the batch size, else the weight gradient dW
  (dW convolves activations with output gradients over the batch, so its lhs 'batch' is the channels);
* model: teacher (`ResNet` in the op_name path), student (`EKDStudent`), prompt (`FourierPrompt`);
* library: YNNPACK (`__ynn_fusion` with a convolution inside), oneDNN custom call, or Eigen (plain).
The dX/dW rule assumes the per-device batch differs from every channel count (true for 8 and 32 with
ResNets, not for 64). XLA drops the metadata of the dW convolutions it rewrites; those are attributed to
the student (the only trained convolutions). 'copy/transpose' is mostly the layout transposes XLA inserts
in front of those dW convolutions and the kernel flips of the dX convolutions.
"""

import dataclasses
import re
from typing import Dict, List, Optional

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_DIMS = re.compile(r"^\w+\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_DIM_LABELS = re.compile(r"dim_labels=([\w]+)_([\w]+)->([\w]+)")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: List[str]
    attributes: str
    computation: str

    @property
    def dims(self) -> Optional[List[int]]:
        match = _DIMS.match(self.shape)
        return [int(d) for d in match.group(1).split(",") if d] if match else None

    @property
    def op_name(self) -> str:
        match = _OP_NAME.search(self.attributes)
        return match.group(1) if match else ""


def _matching(text: str, start: int) -> int:
    """Index just past the bracket that closes text[start] ('(' or '{')."""
    opening = text[start]
    closing = {"(": ")", "{": "}", "[": "]"}[opening]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def parse(hlo_text: str) -> Dict[str, Instruction]:
    """Every instruction of every computation, by name (names are unique within an HLO module)."""
    instructions, computation = {}, ""
    for line in hlo_text.splitlines():
        header = _HEADER.match(line.strip())
        if header and " = " not in line:
            computation = header.group(1)
            continue
        definition = _DEFINITION.match(line)
        if not definition:
            continue
        rest = line[definition.end() :]
        if rest.startswith("("):  # a tuple shape, which contains spaces
            cut = _matching(rest, 0)
            shape, rest = rest[:cut], rest[cut:].lstrip()
        else:
            shape, _, rest = rest.partition(" ")
        opcode, paren, rest = rest.partition("(")
        if not paren:
            continue
        cut = _matching("(" + rest, 0) - 1
        operands = [o.split()[-1].lstrip("%") for o in rest[: cut - 1].split(",") if o.strip()]
        instructions[definition.group(1)] = Instruction(
            definition.group(1), shape, opcode.strip(), operands, rest[cut:], computation
        )
    return instructions


def _model(op_name: str) -> str:
    for key, label in (("EKDStudent", "student"), ("ResNet", "teacher"), ("FourierPrompt", "prompt")):
        if key in op_name:
            return label
    return "other"


def _contracts_over_batch(conv: Instruction, index: Dict[str, Instruction], batch_per_device: int) -> bool:
    """True when the lhs 'batch' dimension is not the batch: a weight-gradient convolution."""
    labels = _DIM_LABELS.search(conv.attributes)
    lhs = index.get(conv.operands[0]) if conv.operands else None
    if labels and lhs is not None and lhs.dims:
        batch_axis = labels.group(1).find("b")
        return 0 <= batch_axis < len(lhs.dims) and lhs.dims[batch_axis] != batch_per_device
    return False


def _conv_kind(conv: Instruction, index: Dict[str, Instruction], batch_per_device: int) -> str:
    weight_gradient = _contracts_over_batch(conv, index, batch_per_device)
    if not conv.op_name:
        # XLA drops the metadata of the dW convolutions it rewrites (after transposing their operands).
        return "dW" if weight_gradient else "fwd?"
    if "transpose(" not in conv.op_name:
        return "fwd"
    return "dW" if weight_gradient else "dX"


def _conv_inside(fusion: Instruction, index: Dict[str, Instruction]) -> Optional[Instruction]:
    called = _CALLS.search(fusion.attributes)
    if not called:
        return None
    return next((i for i in index.values() if i.computation == called.group(1) and i.opcode == "convolution"), None)


def category(instr: Instruction, index: Dict[str, Instruction], batch_per_device: int) -> str:
    """The profile category of one (top-level) instruction."""
    conv, library = None, None
    if instr.opcode == "convolution":
        conv, library = instr, "Eigen"
    elif instr.opcode == "fusion" and '"__ynn_fusion"' in instr.attributes:
        conv = _conv_inside(instr, index)
        library = "YNNPACK" if conv is not None else None
        if conv is None:
            return "dot/eltwise (YNNPACK)"
    elif instr.opcode == "custom-call" and "__onednn$convolution" in instr.attributes:
        conv, library = instr, "oneDNN"
    if conv is not None:
        kind = (
            _conv_kind(conv, index, batch_per_device)
            if conv.opcode == "convolution"
            else ("bwd" if "transpose(" in conv.op_name else "fwd")
        )
        # Only the student's weights are trained, so a dW without metadata is the student's.
        model = _model(conv.op_name or instr.op_name)
        model = "student" if (kind == "dW" and model == "other") else model
        return f"conv {kind} {model} [{library}]"
    if instr.opcode in ("dot", "custom-call") or "dot" in instr.name:
        return "dot (dense layers)"
    # XLA:CPU expands max-pool's backward (select_and_scatter) into a scatter; the fusions keep JAX's name.
    if "select_and_scatter" in instr.op_name or "select_and_gather" in instr.op_name:
        return "max-pool bwd (scatter)"
    if "reduce_window_max" in instr.op_name:
        return "max-pool fwd"
    if instr.opcode == "fft" or "fft" in instr.name:
        return "FFT"
    if instr.opcode in ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"):
        return "collectives"
    if instr.opcode in ("copy", "transpose") or instr.name.startswith(("copy", "transpose")):
        return "copy/transpose"
    if instr.opcode == "fusion":
        return "fusion (BN/elementwise/reduce)"
    return "other"


def classify(hlo_text: str, batch_per_device: int) -> Dict[str, str]:
    """instruction name -> category, for every instruction of the module."""
    index = parse(hlo_text)
    return {name: category(instr, index, batch_per_device) for name, instr in index.items()}
