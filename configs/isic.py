"""ISIC-2019-LT: FoPro-KD (default), the released EKD, or the BSM-only long-tail baseline.

Commands (one fold, imbalance factor 0.002 = nominal ratio 500, MoCo-v2 ResNet-50 teacher):

    python launch/convert_teacher.py --src=moco_v2_800ep_pretrain.pth.tar --arch=resnet50 \
        --out=teachers/moco_v2_r50.npz
    python launch/train.py --config=configs/isic.py:method=fopro,imb=0.002,fold=1 \
        --workdir=workdirs/isic_fopro_0.002_f1

Ablations (same command, other arguments):
    method=ekd                      the released EKD (teacher sees the un-prompted image)
    method=bsm                      the long-tail baseline, no teacher
    method=hinton_kd                logit KD from a model trained on these classes, exported by launch/predict.py
                                    --export: --config.hinton_kd.teacher_artifact=<student.npz>
                                    (docs/adding_a_method.md)
    method=fopro,akd=False          +FPG without adversarial KD (fpg.lambda_adv = 0)
    method=fopro,fpg=radial         FPG variant: 16 radial frequency bands x 3 channels
    method=fopro,fpg=conditional    FPG variant: input-conditional CNN on the log-amplitude
    teacher=dinov2_s14              another frozen teacher (below); the student's projector adapts to its width
Arguments: method=fopro|ekd|bsm|hinton_kd, fpg=spectrum|radial|conditional, akd=True|False, teacher=<registry name>,
imb=0.01|0.005|0.002, fold=1..5, runlocal (tiny shapes and a few steps).
FPG and AKD are a RECONSTRUCTION (the authors never released them): docs/fpg.md.

Teachers (foprokd_jax/models/teachers.py; convert each once, torch needed only for that step):
    teacher=moco_r50 (alias moco)   MoCo-v2 800ep ResNet-50, 2048-d pre-MLP avgpool feature
        --src=moco_v2_800ep_pretrain.pth.tar --arch=resnet50 --out=teachers/moco_v2_r50.npz
    teacher=dinov2_s14 / _b14 / _l14  DINOv2 ViT-S/B/L-14, 384/768/1024-d CLS token; official .pth
        (dinov2_vits14_pretrain.pth) or HF safetensors (facebook/dinov2-small/model.safetensors, detected):
        --src=dinov2_vits14_pretrain.pth --arch=dinov2_vits14 --image_size=224 --out=teachers/dinov2_vits14_224.npz
        (the positional embedding is baked for --image_size, which must equal config.input.image_size)
    teacher=imagenet_r50_v1 / imagenet_r50_v2   torchvision ResNet-50 IMAGENET1K_V1 / V2 .pth, 2048-d
        --src=resnet50-0676ba61.pth (V1) or resnet50-11ad3fa6.pth (V2) --arch=resnet50 \
        --out=teachers/imagenet_r50_v1.npz (or _v2)
        (the reference's 'IMAGENET1K_V1' option actually loads the V2 weights, docs/reference_semantics.md §13.14)
    teacher=imagenet_r18            torchvision ResNet-18 IMAGENET1K_V1 .pth, 512-d (the reference's '18_img')
        --src=resnet18-f37072fd.pth --arch=resnet18 --out=teachers/imagenet_r18.npz
Each registry entry's `convert` field holds its full command; its default artifact is teachers/<...>.npz.
bfloat16 teacher compute (GPU/TPU): --config.teacher.dtype=bfloat16.

Expected result: the paper's tables could not be recovered here (docs/reference_semantics.md §11), so no
number is promised.
Reference settings: Adam 3e-4, clip 5, batch 32, 100 epochs at 224x224, ResNet-18 from scratch.
Hardware: ~100 epochs x 649 steps at 224px; on one modern GPU this is hours, on a 2-core CPU weeks.
Results land in <workdir>/results.json (balanced accuracy on the report split of the best checkpoint).
"""

from configs import common
from foprokd_jax.models import teachers

# Kept for callers of the old per-config dict; the registry is the source of truth.
TEACHERS = teachers.TEACHERS
METHODS = ("fopro", "ekd", "bsm", "hinton_kd")


def get_config(arg=None):
    arg = common.parse_arg(
        arg, method="fopro", teacher="moco_r50", imb="0.01", fold=1, fpg="spectrum", akd=True, runlocal=False
    )
    if arg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {arg.method!r}")
    if arg.fpg not in ("spectrum", "radial", "conditional"):
        raise ValueError(f"fpg must be 'spectrum', 'radial' or 'conditional', got {arg.fpg!r}")
    teachers.get_teacher_spec(arg.teacher)  # ValueError listing the registered names, before any work
    if arg.imb not in ("0.01", "0.005", "0.002"):
        raise ValueError(f"imb must be 0.01, 0.005 or 0.002 (the official split files), got {arg.imb!r}")
    if not 1 <= arg.fold <= 5:
        raise ValueError(f"fold must be in 1..5, got {arg.fold}")

    config = common.method_config(arg.method)
    tag = common.apply_kd_method(config, arg)
    config.name = f"isic_{tag}_imb{arg.imb}_fold{arg.fold}"
    config.input.imb = arg.imb
    config.input.fold = arg.fold
    if arg.runlocal:
        common.apply_kd_runlocal(config, arg.teacher)
    config.lock()
    return config
