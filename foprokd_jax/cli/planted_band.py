"""Does the Fourier prompt find the planted band? A synthetic check of the FPG's explore objective.

    python launch/planted_band.py                                  # radial FPG, 300 steps, 32x32
    python launch/planted_band.py --variants=radial,spectrum --steps=500 --out_dir=/tmp/planted_band

Data (`foprokd_jax/data/planted_band.py`): the class is a weak oriented texture whose frequencies lie in
a known radial band; strong, class-independent distractors fill every other frequency. The frozen
teacher is a small random-init bottleneck ResNet whose BatchNorm statistics are calibrated on the
(un-prompted) training images: a generic feature extractor that mixes all frequencies. A linear probe on
its features barely beats chance on the raw images but does far better once the band is amplified and
the rest attenuated (the 'identity' and 'oracle' runs below measure exactly that), so the teacher is
sensitive to the signal and the band is where a prompt has something to gain.

Two runs of the real `fopro_step.make_fopro_train_step` (lambda_adv = 0 by default, so only the explore
term BSM(W f(P(x)), y) and the small prompt regulariser act on the FPG; the tiny student trains alongside
and plays no role) on the same batches:
  * fpg:      prompt and explore head W trained jointly;
  * identity: W trained the same number of steps with the prompt frozen at the identity;
  * oracle:   the same with the prompt frozen at the ideal gain for this data (log-gain +alpha on the
              planted band, -alpha elsewhere; radial/spectrum variants): the ceiling of the FPG run.
Reported: the learned radial log-gain profile (mean over rfft2 bins inside vs outside the band), and the
held-out explore loss / balanced accuracy of both runs (and of the untrained head). Writes
planted_band.csv (per-band profile), planted_band.json (summary) and planted_band.png.
"""

import csv
import json
import math
import os
import time

from absl import app, flags

from foprokd_jax import xla_flags

xla_flags.apply_cpu_defaults()  # before any JAX computation: XLA reads XLA_FLAGS once (docs/performance.md)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from foprokd_jax import losses, parallel  # noqa: E402
from foprokd_jax.data.planted_band import make_planted_band_dataset  # noqa: E402
from foprokd_jax.methods.fopro import prompt as fourier_prompt  # noqa: E402
from foprokd_jax.methods.fopro import step as fopro_step  # noqa: E402
from foprokd_jax.methods.student_step import normalize_images  # noqa: E402
from foprokd_jax.models.ekd_student import EKDStudent  # noqa: E402
from foprokd_jax.models.resnet import ResNet  # noqa: E402
from foprokd_jax.models.torch_init import torch_dense  # noqa: E402
from foprokd_jax.state import create_train_state  # noqa: E402

DEFAULTS = dict(
    image_size=32,
    num_classes=4,
    band=(0.25, 0.375),
    signal_amplitude=0.06,
    distractor_amplitude=0.12,
    num_train=2048,
    num_test=1024,
    teacher_width=8,
    variant="radial",
    num_bands=16,
    alpha=1.0,
    share_channels=True,
    steps=300,
    batch_size=64,
    lr_prompt=3e-2,
    lr_head=1e-2,
    lambda_adv=0.0,
    lambda_reg=1e-3,
    seed=0,
)


def calibrate_teacher(teacher, variables, images):
    """Sets the random teacher's BN running statistics to those of `images`; it is frozen from then on.

    With BN at its init statistics (mean 0, var 1) the random net's activations have an arbitrary scale;
    one train-mode pass over the (un-prompted) training images sets them to the data's, as a pretrained
    teacher's would be for its own domain.
    """
    _, mutated = jax.jit(lambda v, im: teacher.apply(v, normalize_images(im), train=True, mutable=["batch_stats"]))(
        variables, images
    )
    return jax.device_get({"params": variables["params"], "batch_stats": mutated["batch_stats"]})


def _fpg_optimizer(lr_head):
    """Adam per part. The prompt's learning rate is an injected hyperparameter living in the optimizer
    state, so the FPG run and the identity baseline (prompt lr 0: the prompt never moves) share one
    compiled step; compiling dominates the cost of this benchmark on a CPU."""
    return optax.multi_transform(
        {"prompt": optax.inject_hyperparams(optax.adam)(learning_rate=0.0), "explore_head": optax.adam(lr_head)},
        {"prompt": "prompt", "explore_head": "explore_head"},
    )


def _set_prompt_lr(fpg_opt_state, lr):
    """The same optimizer state with the prompt's injected learning rate set to `lr`."""
    masked = fpg_opt_state.inner_states["prompt"]
    inject = masked.inner_state
    hyperparams = dict(inject.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    prompt_state = masked._replace(inner_state=inject._replace(hyperparams=hyperparams))
    return fpg_opt_state._replace(inner_states=dict(fpg_opt_state.inner_states, prompt=prompt_state))


def make_models(cfg, feature_dim):
    """(student, prompt, explore head). The student is tiny: it trains alongside but plays no role here."""
    student = EKDStudent(
        num_classes=cfg["num_classes"],
        teacher_dim=feature_dim,
        stage_sizes=(1, 1, 1, 1),
        width=4,
        bn_axis_name=parallel.DATA_AXIS,
    )
    # One gain for R, G and B by default: the planted signal is grey, and one profile is easier to read.
    prompt = fourier_prompt.FourierPrompt(
        variant=cfg["variant"],
        alpha=cfg["alpha"],
        num_bands=cfg["num_bands"],
        share_channels=cfg["share_channels"],
        hidden=8,
        depth=2,
    )
    return student, prompt, torch_dense(cfg["num_classes"], feature_dim)


class PlantedBandBenchmark:
    """Data, frozen teacher, models and the compiled functions (fopro train step, held-out logits)."""

    def __init__(self, cfg, mesh=None):
        self.cfg = cfg = {**DEFAULTS, **cfg}
        self.mesh = mesh or parallel.make_mesh(1)
        data_kwargs = dict(
            image_size=cfg["image_size"],
            num_classes=cfg["num_classes"],
            band=cfg["band"],
            signal_amplitude=cfg["signal_amplitude"],
            distractor_amplitude=cfg["distractor_amplitude"],
        )
        self.train = make_planted_band_dataset(cfg["num_train"], seed=cfg["seed"], **data_kwargs)
        self.test = make_planted_band_dataset(cfg["num_test"], seed=cfg["seed"] + 10_000, **data_kwargs)
        self.teacher = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=cfg["teacher_width"])
        self.student, self.prompt, self.head = make_models(cfg, self.teacher.feature_dim)
        # One jitted init for every model, from an 'rbg' key: eager (op-by-op) inits and threefry's
        # compile time cost more CPU seconds than all the training steps of this benchmark.
        # Kept on the host: each run replicates them afresh, and the step donates (deletes) its input state.
        teacher_vars, self.student_vars, self.fpg_params0 = jax.device_get(
            jax.jit(self._init_fn)(jax.random.key(cfg["seed"], impl="rbg"))
        )
        self.teacher_vars = calibrate_teacher(self.teacher, teacher_vars, self.train["image"][:512])
        counts = np.bincount(self.train["label"], minlength=cfg["num_classes"])
        self.cls_loss = losses.make_classification_loss("bsm", counts)
        self.student_tx, self.fpg_tx = optax.adam(3e-4), _fpg_optimizer(cfg["lr_head"])
        self.step = fopro_step.make_fopro_train_step(
            student=self.student,
            teacher=self.teacher,
            prompt=self.prompt,
            explore_head=self.head,
            cls_loss=self.cls_loss,
            optimizer=self.student_tx,
            fpg_optimizer=self.fpg_tx,
            free_u=3.0,
            lambda_cls=1.0,
            lambda_adv=cfg["lambda_adv"],
            lambda_reg=cfg["lambda_reg"],
            teacher_feature_key="pre_logits",
            mesh=self.mesh,
        )
        self._logits = jax.jit(self._logits_fn)

    def _init_fn(self, key):
        """(teacher, student, fpg) variables; both runs start from these, i.e. from the same head."""
        size = self.cfg["image_size"]
        dummy = jnp.zeros((1, size, size, 3))
        keys = jax.random.split(key, 4)
        fpg_params = {
            "prompt": self.prompt.init(keys[2], dummy)["params"],
            "explore_head": self.head.init(keys[3], jnp.zeros((1, self.teacher.feature_dim)))["params"],
        }
        return (
            self.teacher.init(keys[0], dummy, train=False),
            self.student.init(keys[1], dummy, train=False),
            fpg_params,
        )

    def train_explore(self, lr_prompt, prompt_params=None):
        """`steps` fopro steps from the initial variables (the prompt's replaced by `prompt_params` if
        given); lr_prompt = 0 freezes the prompt. Returns (fpg_params, history)."""
        cfg, mesh = self.cfg, self.mesh
        fpg_params = dict(self.fpg_params0)
        if prompt_params is not None:
            fpg_params["prompt"] = prompt_params
        state = create_train_state(self.student_vars, self.student_tx, fpg_params, self.fpg_tx)
        state = state.replace(fpg_opt_state=_set_prompt_lr(state.fpg_opt_state, lr_prompt))
        state = parallel.replicate(state, mesh)
        teacher_vars = parallel.replicate(self.teacher_vars, mesh)
        rng = np.random.default_rng(cfg["seed"] + 2)  # the same batches in both runs
        history = []
        for _ in range(cfg["steps"]):
            idx = rng.choice(len(self.train["label"]), cfg["batch_size"], replace=False)
            batch = {"image": self.train["image"][idx], "label": self.train["label"][idx]}
            state, metrics = self.step(state, teacher_vars, parallel.host_batch_to_global(batch, mesh))
            history.append({k: float(v) for k, v in parallel.to_host(metrics).items() if k.startswith("fpg/")})
        return jax.device_get(state.fpg_params), history

    def oracle_prompt_params(self, saturation=4.0):
        """Prompt logits giving log-gain ~ +alpha inside the band and ~ -alpha outside (tanh(4) = 0.9993)."""
        cfg, size = self.cfg, self.cfg["image_size"]
        r_lo, r_hi = cfg["band"]
        if cfg["variant"] == "radial":
            k = cfg["num_bands"]
            centres = (np.arange(k) + 0.5) / k
            inside = ((centres >= r_lo) & (centres < r_hi))[:, None]
            name = "band_logits"
        elif cfg["variant"] == "spectrum":
            radius = fourier_prompt.radial_frequency_grid(size, size)
            inside = ((radius >= r_lo) & (radius < r_hi))[:, :, None]
            name = "gain_logits"
        else:
            return None
        shape = self.fpg_params0["prompt"][name].shape
        return {name: np.broadcast_to(np.where(inside, saturation, -saturation), shape).astype(np.float32)}

    def _logits_fn(self, fpg_params, images):
        x_prompted, _ = self.prompt.apply({"params": fpg_params["prompt"]}, normalize_images(images))
        t = self.teacher.apply(self.teacher_vars, x_prompted, train=False)["pre_logits"]
        return self.head.apply({"params": fpg_params["explore_head"]}, t)

    def evaluate(self, fpg_params, batch_size=256):
        """Held-out explore loss (BSM; CE + const for balanced labels) and balanced accuracy."""
        images, labels = self.test["image"], self.test["label"]
        n = len(labels)
        # Pad to whole batches so that one compiled shape serves every call.
        padded = np.concatenate([images, np.zeros(((-n) % batch_size,) + images.shape[1:], images.dtype)])
        logits = np.concatenate(
            [
                np.asarray(self._logits(fpg_params, padded[i : i + batch_size]))
                for i in range(0, len(padded), batch_size)
            ]
        )[:n]
        loss = float(jnp.mean(self.cls_loss(jnp.asarray(logits), jnp.asarray(labels))))
        preds = logits.argmax(-1)
        recalls = [np.mean(preds[labels == c] == c) for c in range(self.cfg["num_classes"]) if np.any(labels == c)]
        return {"loss": loss, "bacc": float(np.mean(recalls))}

    def gain_summary(self, fpg_params, num_images=64):
        """Learned log-gain: mean over rfft2 bins inside vs outside the band, and the per-band profile.

        Averaged over the first `num_images` held-out images: the radial and spectrum prompts ignore the
        image, the conditional one does not.
        """
        cfg, size = self.cfg, self.cfg["image_size"]
        images = normalize_images(self.test["image"][:num_images])
        _, log_gain = jax.jit(self.prompt.apply)({"params": fpg_params["prompt"]}, images)
        log_gain = np.asarray(log_gain).mean(axis=(0, -1))  # (H, W//2+1)
        radius = fourier_prompt.radial_frequency_grid(size, size)
        r_lo, r_hi = cfg["band"]
        inside = (radius >= r_lo) & (radius < r_hi)
        radii, profile = fourier_prompt.radial_gain_profile(log_gain[None, :, :, None], cfg["num_bands"], w=size)
        profile = np.asarray(profile)[:, 0]
        k = cfg["num_bands"]
        outside_bands = [b for b in range(k) if (b + 1) / k <= r_lo + 1e-9 or b / k >= r_hi - 1e-9]
        return {
            "in_band": float(log_gain[inside].mean()),
            "out_band": float(log_gain[~inside].mean()),
            "out_band_max": float(np.nanmax(profile[outside_bands])),
            "radii": np.asarray(radii).tolist(),
            "profile": profile.tolist(),
        }


def run_benchmark(cfg, mesh=None, log=print):
    """Both runs and their evaluation; returns a JSON-able summary."""
    bench = PlantedBandBenchmark(cfg, mesh)
    cfg = bench.cfg
    t0 = time.perf_counter()
    fpg_params, history = bench.train_explore(cfg["lr_prompt"])
    id_params, id_history = bench.train_explore(0.0)
    train_s = time.perf_counter() - t0
    oracle_prompt = bench.oracle_prompt_params()
    oracle = None if oracle_prompt is None else bench.evaluate(bench.train_explore(0.0, oracle_prompt)[0])
    curve, id_curve = ([h["fpg/loss_explore"] for h in hist] for hist in (history, id_history))
    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "gain": bench.gain_summary(fpg_params),
        "test_fpg": bench.evaluate(fpg_params),
        "test_identity": bench.evaluate(id_params),
        "test_untrained": bench.evaluate(bench.fpg_params0),
        "test_oracle": oracle,
        # Start = first step (head at init, identity prompt); end = mean of the last 10 steps.
        "train_explore_loss_start": curve[0],
        "train_explore_loss_end": float(np.mean(curve[-10:])),
        "train_identity_loss_end": float(np.mean(id_curve[-10:])),
        "identity_prompt_max_abs_logit": float(max(np.abs(x).max() for x in jax.tree.leaves(id_params["prompt"]))),
        "train_curve_fpg": curve,
        "train_curve_identity": id_curve,
        "train_seconds": train_s,
    }
    g = result["gain"]
    scores = ", ".join(
        f"{name} {r['loss']:.3f}/{r['bacc']:.3f}"
        for name, r in (
            ("fpg", result["test_fpg"]),
            ("identity", result["test_identity"]),
            ("untrained", result["test_untrained"]),
            ("oracle", oracle),
        )
        if r
    )
    log(
        f"[{cfg['variant']} seed {cfg['seed']}] log-gain in band {g['in_band']:+.3f}, outside {g['out_band']:+.3f} "
        f"(max band outside {g['out_band_max']:+.3f}); held-out explore loss/bacc: {scores}; train explore loss "
        f"{result['train_explore_loss_start']:.3f} -> {result['train_explore_loss_end']:.3f} "
        f"(identity -> {result['train_identity_loss_end']:.3f}) ({train_s:.1f} s)"
    )
    return result


def write_csv(results, path):
    """One row per (variant, seed, radial band): the learned mean log-gain and whether it is planted."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "variant",
                "seed",
                "band",
                "r_lo",
                "r_hi",
                "mean_log_gain",
                "gain",
                "in_planted_band",
                "test_explore_loss_fpg",
                "test_explore_loss_identity",
                "test_bacc_fpg",
                "test_bacc_identity",
            ]
        )
        for r in results:
            cfg, k = r["config"], r["config"]["num_bands"]
            r_lo, r_hi = cfg["band"]
            for b, value in enumerate(r["gain"]["profile"]):
                inside = b / k >= r_lo - 1e-9 and (b + 1) / k <= r_hi + 1e-9
                writer.writerow(
                    [
                        cfg["variant"],
                        cfg["seed"],
                        b,
                        b / k,
                        (b + 1) / k,
                        f"{value:.5f}",
                        f"{math.exp(value):.5f}",
                        int(inside),
                        f"{r['test_fpg']['loss']:.5f}",
                        f"{r['test_identity']['loss']:.5f}",
                        f"{r['test_fpg']['bacc']:.5f}",
                        f"{r['test_identity']['bacc']:.5f}",
                    ]
                )
    return path


def plot_results(results, path):
    """Left: learned radial log-gain profile(s), planted band shaded. Right: train explore loss curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    r_lo, r_hi = results[0]["config"]["band"]
    left.axvspan(r_lo, r_hi, color="#f2c14e", alpha=0.35, label="planted band")
    left.axhline(0.0, color="grey", lw=0.8)
    alpha = results[0]["config"]["alpha"]
    for bound in (-alpha, alpha):
        left.axhline(bound, color="grey", lw=0.8, ls=":")
    for r in results:
        k = r["config"]["num_bands"]
        edges = np.arange(k + 1) / k
        label = f"{r['config']['variant']} (seed {r['config']['seed']})"
        left.stairs(r["gain"]["profile"], edges, baseline=None, lw=2, label=label)
        steps = np.arange(1, len(r["train_curve_fpg"]) + 1)
        (line,) = right.plot(steps, _smooth(r["train_curve_fpg"]), lw=1.5, label=f"FPG: {label}")
        right.plot(
            steps,
            _smooth(r["train_curve_identity"]),
            lw=1.5,
            ls="--",
            color=line.get_color(),
            label=f"identity prompt: {label}",
        )
    left.set(
        xlabel="normalised radial frequency (radial_frequency_grid)",
        ylabel="learned log-gain (mean per band)",
        title="Learned FPG gain vs planted band",
        xlim=(0, 1),
    )
    left.legend(fontsize=8)
    right.set(
        xlabel="step",
        ylabel="train explore loss (BSM, 10-step mean)",
        title="Explore objective: FPG vs identity prompt",
    )
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    return path


def _smooth(values, window=10):
    values = np.asarray(values, np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(values) + 1) - counts]) / counts


def _define_flags():
    # Defined when run as a script only: tests import this module next to other absl-flag modules.
    flags.DEFINE_list("variants", ["radial"], "FPG variants to train: radial, spectrum, conditional.")
    flags.DEFINE_list("seeds", ["0"], "Seeds (data, teacher, inits, batches); one full benchmark each.")
    flags.DEFINE_integer("steps", 300, "Train steps per run (the FPG run and the identity baseline each).")
    flags.DEFINE_integer("batch_size", DEFAULTS["batch_size"], "Batch size.")
    flags.DEFINE_integer("image_size", DEFAULTS["image_size"], "Square image size.")
    flags.DEFINE_float("lambda_adv", 0.0, "AKD weight; 0 isolates the explore objective.")
    flags.DEFINE_float("lambda_reg", DEFAULTS["lambda_reg"], "Weight of mean((log M)^2).")
    flags.DEFINE_float("lr_prompt", DEFAULTS["lr_prompt"], "Adam learning rate of the prompt.")
    flags.DEFINE_float("lr_head", DEFAULTS["lr_head"], "Adam learning rate of the explore head.")
    flags.DEFINE_float("signal_amplitude", DEFAULTS["signal_amplitude"], "RMS of the planted class texture.")
    flags.DEFINE_float("distractor_amplitude", DEFAULTS["distractor_amplitude"], "RMS of each distractor.")
    flags.DEFINE_string("out_dir", "workdirs/planted_band", "Where the CSV, JSON and PNG go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    results = []
    for variant in FLAGS.variants:
        for seed in FLAGS.seeds:
            cfg = dict(
                variant=variant,
                seed=int(seed),
                steps=FLAGS.steps,
                batch_size=FLAGS.batch_size,
                image_size=FLAGS.image_size,
                lambda_adv=FLAGS.lambda_adv,
                lambda_reg=FLAGS.lambda_reg,
                lr_prompt=FLAGS.lr_prompt,
                lr_head=FLAGS.lr_head,
                signal_amplitude=FLAGS.signal_amplitude,
                distractor_amplitude=FLAGS.distractor_amplitude,
            )
            results.append(run_benchmark(cfg))
    with open(os.path.join(FLAGS.out_dir, "planted_band.json"), "w") as f:
        json.dump(results, f, indent=1)
    print("wrote", write_csv(results, os.path.join(FLAGS.out_dir, "planted_band.csv")))
    print("wrote", plot_results(results, os.path.join(FLAGS.out_dir, "planted_band.png")))


def run():
    """Console entry point (pyproject.toml [project.scripts]) and `python launch/planted_band.py`."""
    _define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
