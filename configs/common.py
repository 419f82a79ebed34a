"""Helpers shared by the config files: `:arg` parsing (big_vision style) and the default config tree."""

import ml_collections


def parse_arg(arg, **defaults):
    """Parses `'method=ekd,imb=0.002,fold=1,runlocal'` into a ConfigDict, typed by the defaults.

    A bare word sets a boolean default to True (`runlocal`). Unknown keys are errors: a typo must not
    silently run the wrong experiment. Tuples/lists cannot go through `:arg` (commas split it); use
    `--config.x=...` overrides for those.
    """
    parsed = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return parsed
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if key not in defaults:
            raise KeyError(f"Unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"Config argument {key!r} needs a value ({key}=...)")
            parsed[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Config argument {key}={value!r} is not a boolean")
            parsed[key] = value.lower() in ("true", "1")
        else:
            parsed[key] = type(default)(value)
    return parsed


def base_config() -> ml_collections.ConfigDict:
    """The keys every method reads (data, loop, evaluation), documented inline; `method_config` adds the
    method's own subtrees. Reference values: the released EKD run (docs/reference_semantics.md §10)."""
    c = ml_collections.ConfigDict()
    c.name = "run"  # default workdir name: workdirs/<name>
    c.demo = False  # True only in configs/demo.py (synthetic data + method comparison)
    # 'fopro' (EKD with the Fourier prompt on the teacher input + AKD), 'ekd' (the released code: BSM x2 +
    # free_u * teacher-feature loss, teacher sees x), 'bsm' (BSM on fc only, no teacher), 'crckd' or
    # 'hinton_kd': the packages of foprokd_jax/methods/. Set by `method_config`, with the method's subtrees.
    c.method = ""
    c.seed = 0  # model init and data order (grain shuffle + augmentation seeds)

    c.input = ml_collections.ConfigDict()
    # Benchmark (foprokd_jax/data/registry.py, docs/datasets.md): 'isic2019_lt', 'ham10000', 'aptos' or 'hyperkvasir'.
    # image_root is its unpacked download: the folder holding ISIC_2019_Training_Input/ | HAM10000_metadata.csv +
    # HAM10000_images_part_{1,2}/ | train.csv + train_images/ (APTOS) | labeled-images/ (Hyper-Kvasir).
    c.input.dataset = "isic2019_lt"
    c.input.image_root = "data/isic2019"  # folder holding ISIC_2019_Training_Input/*.jpg (official zip)
    c.input.split_dir = "data/isic2019/splits"  # folder of {train,val,test}_skin{fold}_{imb}.csv (FoPro-KD repo)
    c.input.prepared_dir = "data/tfds"  # tfds data_dir for the resized array_record copy (made once)
    c.input.fold = 1  # 1..5: independent draws, not a partition (docs/reference_semantics.md §8.1)
    c.input.imb = "0.01"  # imbalance factor as in the CSV names: 0.01 / 0.005 / 0.002
    # HAM10000 / APTOS / Hyper-Kvasir only (ISIC uses the official files): fold k = test fold k of a seeded,
    # stratified 5-fold partition (docs/datasets.md).
    c.input.split_seed = 2020  # seed of that partition and of the val carve (2020 = CRCKD's APTOS folds)
    c.input.split_mode = "lesion"  # HAM10000: 'lesion' (a lesion_id's images share a split) or 'image' (leaky)
    # Fraction of ALL images moved from the training folds into a 'val' split; < 0 = the dataset's default:
    # HAM10000 0.1 (70/10/20), APTOS 0 and Hyper-Kvasir 0 (train/test only, as in their references).
    c.input.val_fraction = -1.0
    c.input.label_csv = ""  # '' = <image_root>/HAM10000_metadata.csv or <image_root>/train.csv (APTOS)
    # Undecodable images found while preparing (listed in <prepared_dir>/<name>_size<S>.bad_images.json):
    # 'fail' = error, nothing prepared; 'skip' = prepare without them, splits drop them with a warning.
    c.input.bad_image_policy = "fail"
    c.input.image_size = 224  # images are resized once to image_size x image_size (no aspect kept)
    c.input.batch_size = 32  # GLOBAL batch size (summed over all devices and hosts)
    c.input.eval_batch_size = 64  # global batch size for evaluation (last batch padded with mask 0)
    c.input.worker_count = 0  # grain worker processes for decoding/augmentation (0 = in-process)
    # Batches copied to the devices ahead of the step by a background thread (hides the host's batching
    # and transfer behind the step on GPU/TPU); 0 = synchronous. The checkpointed position is unaffected.
    c.input.prefetch_to_device = 2
    # Training sampler (docs/long_tail.md): 'instance' (reference: shuffle, each example once per epoch),
    # 'class_balanced' (class uniform, then example uniform) or 'sqrt' (class prob ~ sqrt(n_c)); the last two
    # draw N examples per epoch with replacement, deterministic in (seed, epoch) and resumable.
    c.input.sampler = "instance"

    c.total_epochs = 100  # reference: 100 rounds x 1 local epoch
    c.total_steps = -1  # > 0 overrides total_epochs (smoke tests, demos)
    c.eval_every_steps = -1  # > 0 overrides "once per epoch"; also the checkpoint interval
    c.log_every_steps = 50  # train metrics to metrics.jsonl / TensorBoard
    c.num_devices = -1  # -1 = all devices; n = the first n (for 1-vs-n comparisons)

    c.eval = ml_collections.ConfigDict()
    # 'val_test': select on val (50/class), report on test (100/class), the conventional reading.
    # 'test_val': the released code's literal protocol (select on test_*.csv, report val_*.csv),
    # docs/reference_semantics.md §9.
    # 'test_last': CRCKD's protocol (no validation set): monitor the test split, report the LAST checkpoint.
    c.eval.protocol = "val_test"
    c.eval.head_min = 700  # head classes: > head_min training images (Hyper-Kvasir protocol note)
    c.eval.tail_max = 70  # tail classes: < tail_max training images

    return c


def method_config(method: str) -> ml_collections.ConfigDict:
    """The shared keys plus exactly the subtrees `method` reads (its package's `default_config()`), so a run's
    config.json holds only keys the run uses. A ValueError lists the methods for an unknown name."""
    from foprokd_jax import methods

    config = base_config()
    config.method = method
    merge(config, methods.get_method(method).default_config())
    return config


def merge(config: ml_collections.ConfigDict, extra: ml_collections.ConfigDict) -> None:
    """Adds `extra`'s keys to `config`, recursing into subtrees both have (e.g. a method's `input.augment`)."""
    for key, value in extra.items():
        if key in config and isinstance(value, ml_collections.ConfigDict):
            merge(config[key], value)
        else:
            config[key] = value


FPG_VARIANTS = ("spectrum", "radial", "conditional")


def check_kd_args(arg) -> None:
    """The `:arg` checks shared by every benchmark config: fold and the FoPro-KD prompt variant."""
    if not 1 <= arg.fold <= 5:
        raise ValueError(f"fold must be in 1..5, got {arg.fold}")
    if arg.fpg not in FPG_VARIANTS:
        raise ValueError(f"fpg must be one of {FPG_VARIANTS}, got {arg.fpg!r}")


def apply_kd_method(config, arg) -> str:
    """Sets the teacher and FPG keys of a 'fopro' / 'ekd' / 'bsm' config (from `method_config(arg.method)`);
    returns its name tag.

    The tag reads `<method>[_<fpg variant>[_noakd]]_<teacher>`, e.g. `fopro_radial_noakd_moco_r50`; 'bsm' has
    no teacher but keeps the teacher name in its tag, so that a sweep's runs line up by teacher.
    """
    from foprokd_jax.models import teachers

    spec = teachers.get_teacher_spec(arg.teacher)  # ValueError listing the registered names
    if "fpg" in config:
        config.fpg.variant = arg.fpg
        config.fpg.lambda_adv = config.fpg.lambda_adv if arg.akd else 0.0
    if "teacher" in config:
        config.teacher.update(
            dict(name=spec.name, artifact=spec.default_artifact, arch=spec.arch, feature_key=spec.feature_key)
        )
    if arg.method == "hinton_kd":  # its teacher is an exported model (config.hinton_kd), not a registry name
        return arg.method
    variant = f"_{arg.fpg}{'' if arg.akd else '_noakd'}" if arg.method == "fopro" else ""
    return f"{arg.method}{variant}_{spec.name}"


def apply_kd_runlocal(config, teacher: str) -> None:
    """`runlocal`: tiny shapes and a few steps for a ResNet-student run (smoke tests, laptops)."""
    from foprokd_jax.models import teachers

    # A ViT needs a multiple of its patch: 2x2 patches (28 px for DINOv2's 14, 32 px for 16; the artifact is
    # converted at that size); CNN teachers have no patch (None).
    patch = teachers.get_teacher_spec(teacher).patch_size
    config.input.image_size = 2 * patch if patch else 32
    config.input.batch_size = 8
    config.input.eval_batch_size = 16
    config.student.width = 8
    config.student.stage_sizes = (1, 1, 1, 1)
    config.total_steps = 4
    config.eval_every_steps = 2
    config.log_every_steps = 1
