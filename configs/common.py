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
    """The full key tree with the reference EKD values (spec §10). Every key is documented inline."""
    c = ml_collections.ConfigDict()
    c.name = "run"                   # default workdir name: workdirs/<name>
    c.demo = False                   # True only in configs/demo.py (synthetic data + method comparison)
    # 'fopro' (EKD with the Fourier prompt on the teacher input + AKD), 'ekd' (the released code: BSM x2 +
    # free_u * teacher-feature loss, teacher sees x) or 'bsm' (BSM on fc only, no teacher)
    c.method = "fopro"
    c.seed = 0                       # model init and data order (grain shuffle + augmentation seeds)

    c.input = ml_collections.ConfigDict()
    c.input.image_root = "data/isic2019"       # folder holding ISIC_2019_Training_Input/*.jpg (official zip)
    c.input.split_dir = "data/isic2019/splits"  # folder of {train,val,test}_skin{fold}_{imb}.csv (FoPro-KD repo)
    c.input.prepared_dir = "data/tfds"          # tfds data_dir for the resized array_record copy (made once)
    c.input.fold = 1                 # 1..5: independent random draws, not a partition (spec §8.1)
    c.input.imb = "0.01"             # imbalance factor as in the CSV names: 0.01 / 0.005 / 0.002
    c.input.image_size = 224         # images are resized once to image_size x image_size (no aspect kept)
    c.input.batch_size = 32          # GLOBAL batch size (summed over all devices and hosts)
    c.input.eval_batch_size = 64     # global batch size for evaluation (last batch padded with mask 0)
    c.input.augment = "skin"         # 'skin' (reference isic-FL transform) or 'none'
    c.input.worker_count = 0         # grain worker processes for decoding/augmentation (0 = in-process)

    c.student = ml_collections.ConfigDict()
    c.student.name = "resnet18"      # trunk architecture
    c.student.init = ""              # '' = torch-style random init; or a converted torchvision artifact (.npz)
    c.student.width = 64             # trunk base width (64 = ResNet-18); tests shrink it
    c.student.stage_sizes = (2, 2, 2, 2)  # blocks per stage (ResNet-18); tests shrink it

    c.teacher = ml_collections.ConfigDict()
    c.teacher.name = "moco_r50"      # frozen teacher, a foprokd_jax/models/teachers.py registry name
    c.teacher.artifact = "teachers/moco_v2_r50.npz"  # converted artifact (.npz + .json sidecar with sha256)
    c.teacher.arch = "resnet50"      # architecture the artifact must declare
    c.teacher.feature_key = "pre_logits"  # distilled feature: 2048-d avgpool before the MoCo MLP (spec §3.2)
    # Teacher compute dtype: 'float32' or 'bfloat16' (faster on GPU/TPU). Parameters stay float32, features
    # are cast back to float32 before the loss, and the FPG always runs in float32.
    c.teacher.dtype = "float32"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "bsm"              # long-tail loss on both heads: 'bsm' (Balanced Softmax) or 'ce'
    c.loss.free_u = 3.0              # weight of the 2 - 2cos teacher-feature term (reference README)

    # FoPro-KD's Fourier Prompt Generator and adversarial KD: a RECONSTRUCTION (docs/fpg.md, spec §2.4, §4).
    c.fpg = ml_collections.ConfigDict()
    c.fpg.variant = "spectrum"       # 'spectrum' (gain per rfft2 bin), 'radial' (per frequency band), 'conditional'
    c.fpg.alpha = 1.0                # log-gain bound: gain = exp(alpha * tanh(g)) in [e^-alpha, e^alpha]
    c.fpg.num_bands = 16             # 'radial': number of radial frequency bands
    c.fpg.share_channels = False     # 'spectrum'/'radial': one gain for R, G and B
    c.fpg.hidden = 16                # 'conditional': channels of the small CNN on the log-amplitude
    c.fpg.depth = 3                  # 'conditional': 3x3 conv + ReLU layers before the output conv
    c.fpg.lambda_cls = 1.0           # weight of the explore term: long-tail loss of a linear head on f(P(x))
    c.fpg.lambda_adv = 1.0           # AKD: the prompt maximises student-teacher disagreement (0 = FPG without AKD)
    c.fpg.lambda_reg = 1e-3          # keeps the prompt near identity: mean((log gain)^2)
    c.fpg.optim = ml_collections.ConfigDict(dict(name="adam", lr=3e-4, b1=0.9, b2=0.999, eps=1e-8,
                                                 weight_decay=0.0, clip_norm=5.0))

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"            # torch-style Adam; lr hard-coded to 3e-4 in the reference
    c.optim.lr = 3e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 5.0          # global-norm clipping of all student gradients before Adam

    c.total_epochs = 100             # reference: 100 rounds x 1 local epoch
    c.total_steps = -1               # > 0 overrides total_epochs (smoke tests, demos)
    c.eval_every_steps = -1          # > 0 overrides "once per epoch"; also the checkpoint interval
    c.log_every_steps = 50           # train metrics to metrics.jsonl / TensorBoard
    c.num_devices = -1               # -1 = all devices; n = the first n (for 1-vs-n comparisons)

    c.eval = ml_collections.ConfigDict()
    # 'val_test': select on val (50/class), report on test (100/class), the conventional reading.
    # 'test_val': the released code's literal protocol (select on test_*.csv, report val_*.csv), spec §9.
    c.eval.protocol = "val_test"
    c.eval.head_min = 700            # head classes: > head_min training images (Hyper-Kvasir protocol note)
    c.eval.tail_max = 70             # tail classes: < tail_max training images
    return c
