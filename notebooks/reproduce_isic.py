# %% [markdown]
# # foprokd_jax: FoPro-KD on ISIC-2019-LT (Colab)
#
# This notebook only drives library code (`foprokd_jax`, `configs/`); the CLI `launch/train.py` does the
# same. It is the jupytext (py:percent) twin of `reproduce_isic.ipynb`; edit this file, then run
# `python notebooks/build_ipynb.py` to regenerate the notebook. Runtime: GPU or TPU in Colab
# (Runtime -> Change runtime type). With `RUNLOCAL = True` (the default when the real files are absent)
# it runs end to end on synthetic data in the official ISIC layout, in about a minute on a CPU; CI runs it
# that way.

# %%
# Set-up. In Colab: clone and install (on a GPU runtime, install the CUDA build of jax first).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.exists("foprokd_jax"):
    subprocess.run(["git", "clone", "--depth=1", "https://github.com/<your-fork>/foprokd_jax.git"], check=True)
    os.chdir("foprokd_jax")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], check=True)
if os.path.basename(os.getcwd()) == "notebooks":
    os.chdir("..")
sys.path.insert(0, os.getcwd())

import jax  # noqa: E402

print("JAX", jax.__version__, "devices:", jax.devices())

# %% [markdown]
# ## Data and teacher
#
# Real run: put `ISIC_2019_Training_Input/` under `data/isic2019/`, the official split CSVs
# (github.com/xmed-lab/FoPro-KD, `data/ham2019/`) under `data/isic2019/splits/`, and convert the MoCo-v2
# checkpoint once (needs torch): `python launch/convert_teacher.py --src=moco_v2_800ep_pretrain.pth.tar
# --arch=resnet50 --out=teachers/moco_v2_r50.npz`. Otherwise the notebook falls back to synthetic data
# and a randomly initialised demo teacher (pipeline check only: no claim about distillation gains).

# %%
IMAGE_ROOT = "data/isic2019"
TEACHER = "teachers/moco_v2_r50.npz"
real_files = os.path.isdir(os.path.join(IMAGE_ROOT, "ISIC_2019_Training_Input")) and os.path.exists(TEACHER)
RUNLOCAL = os.environ.get("FOPROKD_NOTEBOOK_RUNLOCAL", "1" if not real_files else "0") == "1"

from configs import demo as demo_config, isic  # noqa: E402
from foprokd_jax import demo  # noqa: E402

config = isic.get_config("method=fopro,imb=0.01,fold=1" + (",runlocal" if RUNLOCAL else ""))
config.unlock()
if RUNLOCAL:
    synthetic = demo_config.get_config()
    for key in ("image_root", "split_dir", "prepared_dir"):
        config.input[key] = synthetic.input[key]
    config.teacher.update(synthetic.teacher)
    config.total_steps = 8
    config.eval_every_steps = 4
    demo.ensure_synthetic_data(synthetic)
    demo.ensure_demo_teacher(synthetic)
config.lock()
print(config.method, config.fpg.variant, config.input.image_root, config.teacher.artifact)

# %% [markdown]
# ## Train FoPro-KD (rerunning this cell resumes from the workdir's latest checkpoint)

# %%
from foprokd_jax import train  # noqa: E402

WORKDIR = "workdirs/notebook_fopro" + ("_runlocal" if RUNLOCAL else "")
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
except ImportError:  # plain Python (CI): just list them
    print("\n".join(figures))
assert all(os.path.getsize(p) > 0 for p in figures)
