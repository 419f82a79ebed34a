"""The benchmark's bookkeeping (no timing assertions): /proc contention arithmetic, tables, target checks,
and the PyTorch EKD reference step running."""

import pytest

from benchmarks import cpu_contention, report

# /proc/stat aggregate line: user nice system idle iowait irq softirq steal guest guest_nice
PROC_STAT = "cpu  {} 0 {} {} {} 0 {} {} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


def _proc_stat(user, system, idle, iowait, softirq, steal):
    return PROC_STAT.format(user, system, idle, iowait, softirq, steal)


def test_proc_stat_parsing_counts_steal_as_busy_and_iowait_as_idle():
    busy, total = cpu_contention.parse_proc_stat(_proc_stat(100, 20, 300, 10, 5, 7))
    assert busy == 100 + 20 + 5 + 7
    assert total == busy + 300 + 10
    with pytest.raises(ValueError, match="cpu"):
        cpu_contention.parse_proc_stat("intr 1 2 3\n")


def test_pid_stat_parsing_survives_spaces_and_parentheses_in_the_name():
    # fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    # cutime cstime ...
    text = "4242 (python (x) y) R 1 2 3 4 5 6 7 8 9 10 111 22 3 4 20 0 1 0\n"
    assert cpu_contention.parse_proc_pid_stat(text) == 111 + 22 + 3 + 4


def test_foreign_share_is_busy_ticks_not_ours_over_all_ticks():
    before = cpu_contention.CpuSnapshot(busy_ticks=1000, total_ticks=5000, own_ticks=200, wall_s=0.0)
    # 200 ticks elapse on all cores; 150 busy, of which 90 ours -> 60 foreign -> 30%
    after = cpu_contention.CpuSnapshot(busy_ticks=1150, total_ticks=5200, own_ticks=290, wall_s=1.0)
    assert cpu_contention.foreign_share(before, after) == pytest.approx(0.3)
    assert cpu_contention.is_contended(0.3) and not cpu_contention.is_contended(0.05)
    assert cpu_contention.foreign_share(before, before) is None  # no tick: cannot judge
    assert cpu_contention.is_contended(None)


def test_live_snapshot_reads_this_process():
    if not cpu_contention.available():
        pytest.skip("no /proc on this system")  # the benchmark then reports no contention figure
    a = cpu_contention.snapshot()
    sum(i * i for i in range(200_000))
    b = cpu_contention.snapshot()
    assert b.total_ticks >= a.total_ticks and b.own_ticks >= a.own_ticks and b.wall_s > a.wall_s


def _step(framework, method, step_ms, contended=False, size=224, foreign=0.02, compile_s=20.0):
    return {
        "framework": framework,
        "method": method,
        "image_size": size,
        "batch_size": 32,
        "config": "c",
        "img_per_s": 32 / (step_ms / 1e3),
        "step_ms": step_ms,
        "cpu_ms": step_ms * 2,
        "compile_s": compile_s,
        "peak_rss_mib": 2048.0,
        "foreign_share": foreign,
        "contended": contended,
    }


def test_step_table_ratios_and_contention_marks():
    rows = [
        _step("jax", "ekd", 4000.0),
        _step("torch", "ekd", 5000.0, contended=True, foreign=0.5),
        _step("jax", "fopro", 6000.0),
    ]
    lines = report.step_table(rows).splitlines()
    assert lines[0].startswith("| step | config |") and len(lines) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[7] for c in cells] == ["0.80", "1.00", "1.20"]  # step ms / torch EKD step ms
    assert [c[11] for c in cells] == ["ok", "CONTENDED", "ok"]
    assert cells[1][10] == "50%"


def test_target_checks_pass_fail_and_flag_contended_runs():
    steps = [
        _step("jax", "ekd", 3000.0),
        _step("torch", "ekd", 5000.0),
        _step("jax", "fopro", 6000.0),
        _step("jax", "ekd", 900.0, size=112, contended=True, compile_s=70.0),
        _step("torch", "ekd", 1000.0, size=112),
    ]
    pipes = [
        {
            "image_size": 224,
            "batch_size": 32,
            "img_per_s": 25.0,
            "cores": 1.0,
            "img_per_s_per_core": 25.0,
            "foreign_share": 0.0,
            "contended": False,
        }
    ]
    checks = report.target_checks(steps, pipes)
    text = "\n".join(checks)
    assert "224px bs32: EKD step / PyTorch EKD step = 0.600 (target <= 0.8): PASS" in text
    assert "224px bs32: FoPro-KD step / EKD step = 2.000 (target <= 1.6): FAIL" in text
    assert "224px bs32: input pipeline / EKD step rate = 2.3x" in text and "25.0 img/s per core: PASS" in text
    assert "112px bs32: EKD step / PyTorch EKD step = 0.900 (target <= 0.8): FAIL (contended run" in text
    assert "112px bs32: ekd compile + first step = 70.0 s (target <= 60 s): FAIL (contended" in text
    table = report.pipeline_table(pipes, steps)
    assert "| 224 | 32 | read + PIL augment + batch | 25.0 | 1.00 | 25.0 | 2.3 | 0% | ok |" in table
    # augment_on='device': the host only reads and batches; its own target (issue 18), and it never stands in
    # for the augmenting pipeline in the step-rate check.
    read_only = dict(pipes[0], augment_on="device", img_per_s=2500.0, img_per_s_per_core=1250.0, contended=True)
    checks = report.target_checks(steps, [read_only])
    assert not any("input pipeline / EKD step rate" in line for line in checks)
    assert "224px bs32: host read + batch = 1250 img/s per core (target >= 2000): FAIL (contended" in "\n".join(checks)
    assert "| 224 | 32 | read + batch | 2500.0 |" in report.pipeline_table([read_only], steps)
    note = report.contention_note(steps, 0.08)
    assert "2-2%" in note and "1 of 5 runs" in note


def test_torch_ekd_reference_step_runs_and_learns():
    pytest.importorskip("torch")
    from benchmarks import torch_ekd

    step, info = torch_ekd.build_ekd_step(image_size=32, batch_size=4, threads=1)
    assert info["memory_format"] == "channels_last" and info["threads"] == 1
    losses = [step() for _ in range(4)]  # one fixed batch: Adam must bring the EKD loss down
    assert all(v == v for v in losses) and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="threads"):
        torch_ekd.build_ekd_step(image_size=32, batch_size=2, threads=0)


_HLO = """
%fused_dw (p0: f32[64,10,10,8], p1: f32[3,3,64,16]) -> f32[64,3,3,16] {
  %p0 = f32[64,10,10,8]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,64,16]{3,2,1,0} parameter(1)
  ROOT %conv.9 = f32[64,3,3,16]{3,2,1,0} convolution(%p0, %p1), window={size=8x8}, dim_labels=b01f_01io->b01f
}

ENTRY %main (x: f32[8,10,10,64], w: f32[3,3,64,16], t: f32[64,10,10,8]) -> f32[8,10,10,16] {
  %x = f32[8,10,10,64]{3,2,1,0} parameter(0)
  %w = f32[3,3,64,16]{3,2,1,0} parameter(1)
  %t = f32[64,10,10,8]{3,2,1,0} parameter(2)
  %fwd = f32[8,10,10,16]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(s)/jvp(EKDStudent)/trunk/conv1/conv_general_dilated"}
  %tfwd = f32[8,10,10,16]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(s)/ResNet/conv1/conv_general_dilated"}
  %dx = f32[8,10,10,64]{3,2,1,0} convolution(%fwd, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01oi->b01f, metadata={op_name="jit(s)/transpose(jvp(EKDStudent))/trunk/conv1/conv_general_dilated"}
  %convolution.3 = f32[64,3,3,16]{3,2,1,0} convolution(%t, %fwd), window={size=10x10 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %ynn_fusion = f32[64,3,3,16]{3,2,1,0} fusion(%t, %w), kind=kCustom, calls=%fused_dw, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %transpose_copy_fusion = f32[64,10,10,8]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_dw
  ROOT %add_fusion = f32[8,10,10,16]{3,2,1,0} fusion(%fwd, %tfwd), kind=kLoop, calls=%fused_dw, metadata={op_name="jit(s)/add"}
}
"""


def test_hlo_categories_split_convolutions_by_direction_model_and_library():
    from benchmarks import hlo_index

    cats = hlo_index.classify(_HLO, batch_per_device=8)
    assert cats["fwd"] == "conv fwd student [Eigen]"
    assert cats["tfwd"] == "conv fwd teacher [Eigen]"
    assert cats["dx"] == "conv dX student [Eigen]"
    # no metadata and the lhs 'batch' is 64 channels, not the batch of 8: a weight gradient
    assert cats["convolution.3"] == "conv dW student [Eigen]"
    assert cats["ynn_fusion"] == "conv dW student [YNNPACK]"
    assert cats["transpose_copy_fusion"] == "copy/transpose"
    assert cats["add_fusion"] == "fusion (BN/elementwise/reduce)"


def test_fopro_rows_with_a_sparse_fpg_are_labelled_and_never_taken_for_the_fopro_step():
    sparse = dict(_step("jax", "fopro", 4500.0), fpg_update_every=2)
    steps = [_step("jax", "ekd", 3000.0), sparse, dict(_step("jax", "fopro", 6000.0), fpg_update_every=1)]
    assert "224px bs32: FoPro-KD step / EKD step = 2.000" in "\n".join(report.target_checks(steps, []))
    names = [line.split("|")[1].strip() for line in report.step_table(steps).splitlines()[2:]]
    assert names == ["jax ekd", "jax fopro (FPG every 2 steps)", "jax fopro"]


def test_time_step_reports_the_mean_call_of_whole_cycles():
    from benchmarks import timing

    calls = []
    timed = timing.time_step(lambda: calls.append(1), steps=3, warmup=1, calls_per_step=4)
    assert len(calls) == 1 + 4 + 3 * 4 and len(timed.step_s) == 3
    with pytest.raises(ValueError, match="calls_per_step"):
        timing.time_step(lambda: None, steps=1, calls_per_step=0)


@pytest.mark.parametrize("compiled", [False, True])
def test_fopro_floor_counts_a_multiply_add_as_two_flops(compiled):
    """benchmarks/fopro_floor.py's FLOPs come from XLA's cost analysis: a (m, k) @ (k, n) matmul is 2 m k n."""
    import jax
    import jax.numpy as jnp

    from benchmarks import fopro_floor

    a, b = jnp.ones((8, 16), jnp.float32), jnp.ones((16, 4), jnp.float32)
    assert fopro_floor.flops(jax.jit(jnp.matmul), a, b, compiled=compiled) == 2 * 8 * 16 * 4


def test_pipeline_benchmark_tiles_its_few_images_to_a_realistic_epoch():
    from benchmarks import pipeline_timing

    tiled = pipeline_timing.TiledSource(["a", "b", "c"], 7)
    assert len(tiled) == 7 and [tiled[i] for i in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
    assert pipeline_timing.PIPELINE_EXAMPLES == 25331  # ISIC-2019's training images
