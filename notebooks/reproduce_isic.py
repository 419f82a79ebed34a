# %% [markdown]
# # foprokd_jax: FoPro-KD on ISIC-2019-LT (Colab)
#
# This notebook only drives library code (`foprokd_jax`, `configs`); the command line
# (`foprokd-train --config=configs/isic.py:...`) does the same. It is the py:percent twin of
# `reproduce_isic.ipynb`: edit the twin, then run `python notebooks/build_ipynb.py` to regenerate the notebook.
#
# **Colab**: Runtime -> Change runtime type -> GPU (or TPU), then run all cells. The first cell installs the
# package from `REPO_URL` without replacing the accelerator build of jax that Colab already has, and mounts
# Google Drive: data, the converted teacher and the workdir live there, so after a disconnect re-running the
# notebook resumes from the last checkpoint. Without the real files it runs end to end on synthetic data in the
# official ISIC layout (a pipeline check, about a minute on a CPU); CI executes it that way.

# %%
# Set-up: installs the package (unless it is importable already) and mounts Google Drive in Colab.
import importlib.util
import json
import os
import subprocess
import sys

# The one place to edit: where the package is installed from (a fork, or a branch: ".../foprokd_jax@my-branch").
REPO_URL = "https://github.com/foprokd/foprokd_jax"
IN_COLAB = "google.colab" in sys.modules


def jax_state():
    """(version, default backend) of the jax this Python would import, in a fresh process; None if absent."""
    probe = "import json, jax; print(json.dumps([jax.__version__, jax.default_backend()]))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return tuple(json.loads(r.stdout.strip().splitlines()[-1])) if r.returncode == 0 else None


def visible_gpu():
    """The CUDA major version the driver supports (e.g. 12), or None without an NVIDIA GPU."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    except OSError:
        return None
    marker = "CUDA Version:"
    return int(out.split(marker)[1].split(".")[0]) if marker in out else None


if importlib.util.find_spec("foprokd_jax") is None:
    before = jax_state()
    cuda = visible_gpu()
    target = f"foprokd-jax @ git+{REPO_URL}"
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if before is not None and before[1] != "cpu":
        # Keep the accelerator jax that is already here: pin it (and its jaxlib / plugins) while installing.
        frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
        pins = [
            line
            for line in frozen.splitlines()
            if "==" in line
            and (
                line.split("==")[0].lower().replace("_", "-") in ("jax", "jaxlib")
                or line.lower().replace("_", "-").startswith(("jax-cuda", "libtpu"))
            )
        ]
        print("keeping the installed accelerator jax:", ", ".join(pins))
        with open("/tmp/jax_constraints.txt", "w") as f:
            f.write("\n".join(pins) + "\n")
        pip += ["-c", "/tmp/jax_constraints.txt"]
    elif cuda is not None:
        # A GPU but no GPU jax: the package's [gpu] extra is jax[cuda12], which runs on CUDA 12 and newer drivers.
        print(
            f"GPU runtime (driver CUDA {cuda}) without a GPU build of jax: installing jax[cuda12] "
            "(the [gpu] extra); by hand: pip install 'jax[cuda12]>=0.10.2,<0.13'"
        )
        target = f"foprokd-jax[gpu] @ git+{REPO_URL}"
    r = subprocess.run(pip + [target])
    if r.returncode != 0:
        raise RuntimeError(
            f"pip could not install {target}. If it says the jax pin conflicts, this runtime's jax "
            f"{before[0] if before else ''} is outside foprokd-jax's range (jax>=0.10.2,<0.13): "
            "install a matching one first, e.g. pip install -U 'jax[cuda12]>=0.10.2,<0.13' on a "
            "GPU runtime, then re-run this cell."
        )
    importlib.invalidate_caches()
    after = jax_state()
    print("jax before:", before, "after:", after)
    if before is not None and before[1] != "cpu" and after != before:
        raise RuntimeError(f"installing changed jax from {before} to {after}; restart the runtime and report this.")
    if cuda is not None and (after is None or after[1] != "gpu"):
        print(
            f"WARNING: a GPU is visible (CUDA {cuda}) but jax runs on {after and after[1]}. Install "
            "pip install -U 'jax[cuda12]>=0.10.2,<0.13' and restart the runtime."
        )

# Data, the converted teacher and workdirs: on Google Drive in Colab (they survive a disconnect), else here.
if IN_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
    STORAGE = "/content/drive/MyDrive/foprokd"
else:
    STORAGE = "."
os.makedirs(STORAGE, exist_ok=True)

import jax  # noqa: E402

print("JAX", jax.__version__, "backend:", jax.default_backend(), "devices:", jax.devices())
print("storage:", os.path.abspath(STORAGE))

# %% [markdown]
# ## Data and teacher
#
# Real run: put `ISIC_2019_Training_Input/` (the unzipped official ISIC 2019 training images) under
# `<storage>/data/isic2019/`, the 45 official split CSVs (https://github.com/xmed-lab/FoPro-KD, folder
# `data/ham2019/`) under `<storage>/data/isic2019/splits/`, and convert the MoCo-v2 checkpoint once (needs
# torch, which Colab has): `foprokd-convert-teacher --src=moco_v2_800ep_pretrain.pth.tar --arch=resnet50
# --out=<storage>/teachers/moco_v2_r50.npz`. The split folder is checked against the packaged facts of the
# official files first. Without these files the notebook falls back to synthetic data and a randomly initialised
# demo teacher (a pipeline check only: no claim about distillation gains).

# %%
IMAGE_ROOT = os.path.join(STORAGE, "data", "isic2019")
SPLIT_DIR = os.path.join(IMAGE_ROOT, "splits")
TEACHER = os.path.join(STORAGE, "teachers", "moco_v2_r50.npz")
real_files = os.path.isdir(os.path.join(IMAGE_ROOT, "ISIC_2019_Training_Input")) and os.path.exists(TEACHER)
RUNLOCAL = os.environ.get("FOPROKD_NOTEBOOK_RUNLOCAL", "0" if real_files else "1") == "1"

from configs import demo as demo_config  # noqa: E402
from configs import isic  # noqa: E402
from foprokd_jax import demo  # noqa: E402
from foprokd_jax.data import split_facts  # noqa: E402

config = isic.get_config("method=fopro,imb=0.01,fold=1" + (",runlocal" if RUNLOCAL else ""))
config.unlock()
if RUNLOCAL:
    synthetic = demo_config.get_config()
    for key in ("image_root", "split_dir", "prepared_dir"):
        config.input[key] = os.path.join(STORAGE, synthetic.input[key])
    synthetic.input.update({key: config.input[key] for key in ("image_root", "split_dir", "prepared_dir")})
    synthetic.teacher.artifact = os.path.join(STORAGE, synthetic.teacher.artifact)
    config.teacher.update(synthetic.teacher)
    config.total_steps = 8
    config.eval_every_steps = 4
    demo.ensure_synthetic_data(synthetic)
    demo.ensure_demo_teacher(synthetic)
else:
    differences = split_facts.compare_folder(SPLIT_DIR)
    if differences:
        raise RuntimeError("these split files differ from the official ones:\n" + "\n".join(map(str, differences)))
    config.input.image_root = IMAGE_ROOT
    config.input.split_dir = SPLIT_DIR
    config.input.prepared_dir = os.path.join(STORAGE, "data", "tfds")
    config.teacher.artifact = TEACHER
config.lock()
print(config.method, config.fpg.variant, config.input.image_root, config.teacher.artifact)

# %% [markdown]
# ## Train FoPro-KD (re-running this cell, also after a disconnect, resumes from the workdir's latest checkpoint)

# %%
from foprokd_jax import train  # noqa: E402

WORKDIR = os.path.join(STORAGE, "workdirs", "notebook_fopro" + ("_runlocal" if RUNLOCAL else ""))
results = train.train_and_evaluate(config, WORKDIR)
print("test balanced accuracy:", round(results["report"]["bacc"], 4))
print("per-class recall:", results["report"]["per_class_recall"])

# %% [markdown]
# ## Plots: training curves, confusion matrix, per-class recall, the learned Fourier prompt

# %%
import glob  # noqa: E402

figures = [os.path.join(WORKDIR, name) for name in ("curves.png", "confusion_matrix.png", "per_class_recall.png")]
figures += sorted(glob.glob(os.path.join(WORKDIR, "images", "*.png")))[-2:]
try:
    from IPython.display import Image, display

    for path in figures:
        display(Image(path))
except ImportError:  # plain Python: just list them
    print("\n".join(figures))
assert all(os.path.getsize(p) > 0 for p in figures)
