"""Side-by-side tables and the issue-8 target checks from benchmark result rows (pure functions, no timing).

A step row (benchmarks/benchmark.py) is a dict with: framework ('jax' | 'torch'), method, image_size,
batch_size, config (a short label: XLA flag set, torch threads), img_per_s, step_ms, cpu_ms, compile_s,
peak_rss_mib, foreign_share, contended. A pipeline row has: image_size, batch_size, img_per_s, cores,
img_per_s_per_core, foreign_share, contended.

Tables are GitHub markdown, so a run's output can be pasted into docs/performance.md as is.
"""

from typing import Iterable, List, Optional, Sequence

# Issue 8's performance targets.
TARGET_EKD_VS_TORCH = 0.8  # our EKD step time / the PyTorch EKD step time, at most
TARGET_FOPRO_VS_EKD = 1.6  # FoPro-KD step time / our EKD step time, at most
TARGET_PIPELINE_VS_STEP = 2.0  # input pipeline img/s / EKD step img/s, at least
TARGET_COMPILE_S = 60.0  # first-step compile, at most
TARGET_READ_BATCH_PER_CORE = 2000.0  # host img/s per core with augment_on='device' (read + batch only), at least


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(share: Optional[float]) -> str:
    return "–" if share is None else f"{100.0 * share:.0f}%"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def find_step(
    rows: Sequence[dict], framework: str, method: str, image_size: int, batch_size: int, config: Optional[str] = None
) -> Optional[dict]:
    """The first step row matching the keys (and `config`, when given); a FoPro-KD row timed with the FPG
    trained only every k > 1 steps never stands for the FoPro-KD step itself."""
    for row in rows:
        if (
            (row.get("framework"), row.get("method"), row.get("image_size"), row.get("batch_size"))
            == (framework, method, image_size, batch_size)
            and (config is None or row.get("config") == config)
            and (row.get("fpg_update_every") or 1) == 1
        ):
            return row
    return None


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def step_table(rows: Sequence[dict]) -> str:
    """One line per step row; 'ratio' is step time / the PyTorch EKD step time at the same size and batch."""
    out = []
    for row in rows:
        torch_row = find_step(rows, "torch", "ekd", row["image_size"], row["batch_size"])
        ratio = _ratio(row.get("step_ms"), torch_row and torch_row.get("step_ms"))
        every = row.get("fpg_update_every") or 1
        name = f"{row['framework']} {row['method']}" + (f" (FPG every {every} steps)" if every > 1 else "")
        out.append(
            [
                name,
                _fmt(row.get("config")),
                _fmt(row["image_size"]),
                _fmt(row["batch_size"]),
                _fmt(row.get("img_per_s"), 2),
                _fmt(row.get("step_ms")),
                _fmt(row.get("cpu_ms")),
                _fmt(ratio, 2),
                _fmt(row.get("compile_s")),
                _fmt(row.get("peak_rss_mib"), 0),
                _percent(row.get("foreign_share")),
                "CONTENDED" if row.get("contended") else "ok",
            ]
        )
    return markdown_table(
        [
            "step",
            "config",
            "size",
            "batch",
            "img/s",
            "step ms (median)",
            "CPU ms/step",
            "ratio vs torch EKD",
            "compile s",
            "peak RSS MiB",
            "foreign CPU",
            "run",
        ],
        out,
    )


# What the host pipeline does per example under each `input.augment_on`.
PIPELINE_WORK = {"host": "read + PIL augment + batch", "device": "read + batch"}


def pipeline_table(pipeline_rows: Sequence[dict], step_rows: Sequence[dict]) -> str:
    """Input-pipeline rate, per core, and as a multiple of the JAX EKD step's consumption rate."""
    out = []
    for row in pipeline_rows:
        ekd = find_step(step_rows, "jax", "ekd", row["image_size"], row["batch_size"])
        multiple = _ratio(row.get("img_per_s"), ekd and ekd.get("img_per_s"))
        out.append(
            [
                _fmt(row["image_size"]),
                _fmt(row["batch_size"]),
                PIPELINE_WORK[row.get("augment_on", "host")],
                _fmt(row.get("img_per_s")),
                _fmt(row.get("cores"), 2),
                _fmt(row.get("img_per_s_per_core")),
                _fmt(multiple, 1),
                _percent(row.get("foreign_share")),
                "CONTENDED" if row.get("contended") else "ok",
            ]
        )
    return markdown_table(
        [
            "size",
            "batch",
            "host work",
            "pipeline img/s",
            "cores used",
            "img/s per core",
            "x JAX EKD step rate",
            "foreign CPU",
            "run",
        ],
        out,
    )


def _verdict(value: Optional[float], limit: float, at_most: bool, contended: bool) -> str:
    if value is None:
        return "not measured"
    ok = value <= limit if at_most else value >= limit
    verdict = "PASS" if ok else "FAIL"
    return f"{verdict} (contended run: not conclusive)" if contended else verdict


def _pipeline_row(pipeline_rows, size, batch, augment_on):
    """The pipeline row of (size, batch) under `augment_on`; rows from before issue 18 have no key: 'host'."""
    key = (size, batch, augment_on)
    rows = (p for p in pipeline_rows if (p["image_size"], p["batch_size"], p.get("augment_on", "host")) == key)
    return next(rows, None)


def read_batch_checks(pipeline_rows: Sequence[dict]) -> List[str]:
    """Issue 18's host target: read + batch (augment_on='device') >= TARGET_READ_BATCH_PER_CORE img/s per core."""
    lines = []
    for row in pipeline_rows:
        if row.get("augment_on") != "device" or not row.get("img_per_s_per_core"):
            continue
        per_core = row["img_per_s_per_core"]
        lines.append(
            f"{row['image_size']}px bs{row['batch_size']}: host read + batch = {per_core:.0f} img/s per core "
            f"(target >= {TARGET_READ_BATCH_PER_CORE:.0f}): "
            + _verdict(per_core, TARGET_READ_BATCH_PER_CORE, False, row.get("contended"))
        )
    return lines


def target_checks(step_rows: Sequence[dict], pipeline_rows: Sequence[dict]) -> List[str]:
    """One line per issue-8 target and image size: the measured value and PASS / FAIL."""
    lines = []
    sizes = sorted({(r["image_size"], r["batch_size"]) for r in step_rows if r["framework"] == "jax"})
    for size, batch in sizes:
        ekd = find_step(step_rows, "jax", "ekd", size, batch)
        torch_ekd = find_step(step_rows, "torch", "ekd", size, batch)
        fopro = find_step(step_rows, "jax", "fopro", size, batch)
        pipe = _pipeline_row(pipeline_rows, size, batch, "host")
        tag = f"{size}px bs{batch}"
        if ekd and torch_ekd:
            ratio = _ratio(ekd["step_ms"], torch_ekd["step_ms"])
            lines.append(
                f"{tag}: EKD step / PyTorch EKD step = {ratio:.3f} (target <= {TARGET_EKD_VS_TORCH}): "
                + _verdict(ratio, TARGET_EKD_VS_TORCH, True, ekd["contended"] or torch_ekd["contended"])
            )
        if ekd and fopro:
            ratio = _ratio(fopro["step_ms"], ekd["step_ms"])
            lines.append(
                f"{tag}: FoPro-KD step / EKD step = {ratio:.3f} (target <= {TARGET_FOPRO_VS_EKD}): "
                + _verdict(ratio, TARGET_FOPRO_VS_EKD, True, ekd["contended"] or fopro["contended"])
            )
        if ekd and pipe:
            multiple = _ratio(pipe["img_per_s"], ekd["img_per_s"])
            lines.append(
                f"{tag}: input pipeline / EKD step rate = {multiple:.1f}x (target >= "
                f"{TARGET_PIPELINE_VS_STEP}), {pipe['img_per_s_per_core']} img/s per core: "
                + _verdict(multiple, TARGET_PIPELINE_VS_STEP, False, ekd["contended"] or pipe["contended"])
            )
        for row in (ekd, fopro):
            if row:
                lines.append(
                    f"{tag}: {row['method']} compile + first step = {row['compile_s']:.1f} s (target <= "
                    f"{TARGET_COMPILE_S:.0f} s): "
                    + _verdict(row["compile_s"], TARGET_COMPILE_S, True, row["contended"])
                )
    return lines + read_batch_checks(pipeline_rows)


def contention_note(rows: Sequence[dict], threshold: float) -> str:
    """One sentence stating the contention measured over all rows."""
    shares = [r["foreign_share"] for r in rows if r.get("foreign_share") is not None]
    if not shares:
        return "Contention: not measured (no /proc on this system)."
    flagged = sum(1 for r in rows if r.get("contended"))
    return (
        f"Contention: other processes used {100 * min(shares):.0f}-{100 * max(shares):.0f}% of all cores "
        f"during the timed steps; {flagged} of {len(rows)} runs exceed the {100 * threshold:.0f}% threshold "
        f"and are marked CONTENDED (compare ratios of adjacent runs, not absolute numbers)."
    )
