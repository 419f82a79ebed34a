"""Our own PyTorch version of the EKD train step, the speed reference of docs/performance.md (not training code).

The same computation as `foprokd_jax.methods.ekd.step.make_train_step` (docs/reference_semantics.md §3.4):

* teacher: torchvision ResNet-50, frozen, in eval mode (BN running statistics), without gradient; its
  2048-d pooled feature (the MoCo-v2 embedding of `teacher_feature_key='pre_logits'`);
* student: torchvision ResNet-18 trunk (pooled 512-d feature h) plus the heads of
  `foprokd_jax/models/ekd_student.py`: fc Linear(512, C), p_free Linear(512, 512) -> BatchNorm1d -> ReLU
  -> Linear(512, 2048), fc_free Linear(2048, C); BN in train mode;
* loss (`foprokd_jax/losses.py`): BSM(fc(h)) + BSM(fc_free(p)) + free_u * mean(2 - 2 cos(p, t)), where
  BSM is cross-entropy on logits + log(prior + 1e-12);
* global-norm clip 5, then Adam(3e-4);
* input: the uint8 NHWC batch the pipeline ships, normalised inside the step as the JAX step does.

Run as torch users would for speed on CPU: channels_last tensors and weights, `torch.set_num_threads`,
eager mode. torch and torchvision are optional (requirements-test.txt); torchvision is imported through
`foprokd_jax.porting.torch_compat.import_torchvision()`.
"""

from typing import Callable, Tuple

import numpy as np

from foprokd_jax.image_norm import IMAGENET_MEAN, IMAGENET_STD


def build_ekd_step(
    image_size: int, batch_size: int, num_classes: int = 8, free_u: float = 3.0, threads: int = 2, seed: int = 0
) -> Tuple[Callable[[], float], dict]:
    """Models, optimizer and one fixed random batch; returns (`step()` -> loss float, info).

    Each call of `step()` runs one full train step (forward of teacher and student, backward, clip, Adam)
    and returns once it is done (eager CPU execution is synchronous).
    """
    import torch
    from torch import nn

    from foprokd_jax.porting.torch_compat import import_torchvision

    torchvision = import_torchvision()
    if threads < 1:
        raise ValueError(f"torch threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    channels_last = torch.channels_last

    teacher = torchvision.models.resnet50(weights=None)
    teacher.fc = nn.Identity()  # the pooled 2048-d feature
    teacher = teacher.eval().requires_grad_(False).to(memory_format=channels_last)

    trunk = torchvision.models.resnet18(weights=None)
    feature_dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    teacher_dim = 2048
    student = (
        nn.ModuleDict(
            {
                "trunk": trunk,
                "fc": nn.Linear(feature_dim, num_classes),
                "p_free": nn.Sequential(
                    nn.Linear(feature_dim, feature_dim),
                    nn.BatchNorm1d(feature_dim),
                    nn.ReLU(),
                    nn.Linear(feature_dim, teacher_dim),
                ),
                "fc_free": nn.Linear(teacher_dim, num_classes),
            }
        )
        .train()
        .to(memory_format=channels_last)
    )
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)

    counts = np.arange(num_classes, 0, -1, dtype=np.float64)  # the JAX benchmark's long-tailed counts
    log_prior = torch.tensor(np.log(counts / counts.sum() + 1e-12), dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, num_classes, (batch_size,)).astype(np.int64))
    ce = nn.CrossEntropyLoss()

    def normalized_distance(p, t):
        return 2.0 - 2.0 * (nn.functional.normalize(p, dim=-1) * nn.functional.normalize(t, dim=-1)).sum(-1)

    def step() -> float:
        # uint8 NHWC -> float NCHW view with channels_last strides (no copy of the layout).
        x = images.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
        x = x.contiguous(memory_format=channels_last)
        with torch.inference_mode():
            t = teacher(x)
        h = student["trunk"](x)
        p = student["p_free"](h)
        loss = (
            ce(student["fc"](h) + log_prior, labels)
            + ce(student["fc_free"](p) + log_prior, labels)
            + free_u * normalized_distance(p, t).mean()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    info = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "memory_format": "channels_last",
        "mode": "eager",
    }
    return step, info
