"""'hinton_kd': logit distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
NIPS Deep Learning Workshop 2014, arXiv:1503.02531) from a teacher trained on the SAME classes into the ResNet
student:

    L = (1 - alpha) * LT(z, y) + alpha * tau^2 * mean_i KL(softmax(t_i / tau) || softmax(z_i / tau))

LT is the configured long-tail loss on the hard labels (`config.loss`, BSM by default), t the frozen teacher's
logits, tau the temperature (tau^2 keeps the soft term's gradients on the scale of the hard term's, as the paper
says). The teacher is any student exported by `launch/predict.py --export` (e.g. a ResNet-50 or CRCKD's DenseNet
trained here on the same data): a public foundation model has no logits over our classes, which is why FoPro-KD
distils features instead.

The worked example of docs/adding_a_method.md: `config.py` (keys), `objective.py` (the loss), `method.py`
(`build`, on the shared student step of `methods/student_step.py`).
"""

from foprokd_jax.methods.hinton_kd.config import default_config, validate
from foprokd_jax.methods.hinton_kd.method import build

__all__ = ["build", "default_config", "validate"]
