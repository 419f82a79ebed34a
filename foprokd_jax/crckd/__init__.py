"""CRCKD (Xing et al., MICCAI 2021): mean-teacher distillation with class-guided contrastive (CCD) and
categorical relation-preserving (CRP) losses, ported from the authors' code (shared/specs/crckd_spec.md).

Modules: `model` (DenseNet-121 + fc + classifier, embed heads), `losses`, `memory_bank`, `schedule`,
`optimizer`, `data` (two views + contrast indices), `state`, `step`, `method` (`build_crckd`).
docs/crckd.md lists every choice and how each ambiguity of the reference code was settled.
"""
