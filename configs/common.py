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
    # Benchmark (foprokd_jax/data/registry.py, docs/datasets.md): 'isic2019_lt', 'ham10000', 'aptos' or 'hyperkvasir'.
    # image_root is its unpacked download: the folder holding ISIC_2019_Training_Input/ | HAM10000_metadata.csv +
    # HAM10000_images_part_{1,2}/ | train.csv + train_images/ (APTOS) | labeled-images/ (Hyper-Kvasir).
    c.input.dataset = "isic2019_lt"
    c.input.image_root = "data/isic2019"       # folder holding ISIC_2019_Training_Input/*.jpg (official zip)
    c.input.split_dir = "data/isic2019/splits"  # folder of {train,val,test}_skin{fold}_{imb}.csv (FoPro-KD repo)
    c.input.prepared_dir = "data/tfds"          # tfds data_dir for the resized array_record copy (made once)
    c.input.fold = 1                 # 1..5: independent random draws, not a partition (spec §8.1)
    c.input.imb = "0.01"             # imbalance factor as in the CSV names: 0.01 / 0.005 / 0.002
    # HAM10000 / APTOS / Hyper-Kvasir only (ISIC uses the official files): fold k = test fold k of a seeded,
    # stratified 5-fold partition (docs/datasets.md).
    c.input.split_seed = 2020        # seed of that partition and of the val carve (2020 = CRCKD's APTOS folds)
    c.input.split_mode = "lesion"    # HAM10000: 'lesion' (a lesion_id's images share a split) or 'image' (leaky)
    # Fraction of ALL images moved from the training folds into a 'val' split; < 0 = the dataset's default:
    # HAM10000 0.1 (70/10/20), APTOS 0 and Hyper-Kvasir 0 (train/test only, as in their references).
    c.input.val_fraction = -1.0
    c.input.label_csv = ""           # '' = <image_root>/HAM10000_metadata.csv or <image_root>/train.csv (APTOS)
    # Undecodable images found while preparing (listed in <prepared_dir>/<name>_size<S>.bad_images.json):
    # 'fail' = error, nothing prepared; 'skip' = prepare without them, splits drop them with a warning.
    c.input.bad_image_policy = "fail"
    c.input.image_size = 224         # images are resized once to image_size x image_size (no aspect kept)
    c.input.batch_size = 32          # GLOBAL batch size (summed over all devices and hosts)
    c.input.eval_batch_size = 64     # global batch size for evaluation (last batch padded with mask 0)
    c.input.augment = "skin"         # 'skin' (reference isic-FL transform) or 'none'
    c.input.worker_count = 0         # grain worker processes for decoding/augmentation (0 = in-process)
    # Batches copied to the devices ahead of the step by a background thread (hides the host's batching
    # and transfer behind the step on GPU/TPU); 0 = synchronous. The checkpointed position is unaffected.
    c.input.prefetch_to_device = 2
    # Training sampler (docs/long_tail.md): 'instance' (reference: shuffle, each example once per epoch),
    # 'class_balanced' (class uniform, then example uniform) or 'sqrt' (class prob ~ sqrt(n_c)); the last two
    # draw N examples per epoch with replacement, deterministic in (seed, epoch) and resumable.
    c.input.sampler = "instance"

    c.student = ml_collections.ConfigDict()
    c.student.name = "resnet18"      # trunk architecture
    c.student.init = ""              # '' = torch-style random init; or a converted torchvision artifact (.npz)
    c.student.width = 64             # trunk base width (64 = ResNet-18); tests shrink it
    c.student.stage_sizes = (2, 2, 2, 2)  # blocks per stage (ResNet-18); tests shrink it
    # Class heads fc/fc_free: 'linear' (torch Linear), 'cosine' (LDAM's normalised-linear ClassifierLDAM, no
    # bias) or 'auto' = cosine exactly when loss.name == 'ldam', as the reference (models/ekd_student.py).
    c.student.classifier = "auto"
    # Student compute dtype: 'float32' or 'bfloat16' (mixed precision for GPU/TPU; slower on CPU). Parameters,
    # optimiser state and BN statistics stay float32 and outputs are cast to float32 before the losses.
    c.student.dtype = "float32"

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
    # loss.name may also be 'focal', 'cb', 'rw', 'la', 'ldam' or 'lcc' (docs/long_tail.md, spec §5); their
    # parameters follow (reference values; each is read only by its loss):
    c.loss.focal_gamma = 2.0         # 'focal': -(1 - p_t)^gamma log p_t, p_t detached in the factor (reference)
    c.loss.cb_beta = 0.9999          # 'cb': class-balanced weights (1 - beta) / (1 - beta^n_c), summing to C
    c.loss.la_tau = 1.0              # 'la': logit-adjusted CE(z + tau log pi); 0 = CE, 1 = BSM (Menon et al.)
    c.loss.ldam_max_m = 0.5          # 'ldam': largest margin; m_c ~ n_c^(-1/4)
    c.loss.ldam_s = 30.0             # 'ldam': logit scale s of CE(s (z - m_y onehot))
    c.loss.drw_epoch = 80            # 'ldam': DRW from this epoch (reference floor(0.8 x 100 epochs)); < 0 = never
    c.loss.drw_beta = 0.9999         # 'ldam': class-balanced beta of the DRW weights (before: weight 1)
    c.loss.lcc_tau = 0.5             # 'lcc': CE(z - tau n_c^(-1/4)) (FedLC-style calibration, reference T)
    # Batch reduction of weighted losses (cb, rw, ldam+DRW): 'weights' = sum(w_y l) / sum(w_y) over the global
    # batch (torch CrossEntropyLoss(weight), the reference); 'batch' = sum(w_y l) / B
    c.loss.weighted_mean = "weights"

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
    c.fpg.update_every = 1           # train the FPG on every k-th step only (speed switch); 1 = every step (default)
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
    # 'test_last': CRCKD's protocol (no validation set): monitor the test split, report the LAST checkpoint.
    c.eval.protocol = "val_test"
    c.eval.head_min = 700            # head classes: > head_min training images (Hyper-Kvasir protocol note)
    c.eval.tail_max = 70             # tail classes: < tail_max training images

    # CRCKD (method 'crckd', crckd_spec.md, docs/crckd.md): DenseNet-121 student + EMA mean teacher, CCD + CRP.
    # Defaults are the reference CODE's effective values; the switches marked (ambiguity) are settled in
    # docs/crckd.md. CRCKD ignores student.*, teacher.*, loss.*, optim.* and input.augment.
    c.crckd = ml_collections.ConfigDict()
    c.crckd.backbone_init = ""       # '' = random init; or a converted torchvision densenet121 artifact (ImageNet, the
    #                                  reference: launch/convert_teacher.py --arch=densenet121) loaded into both nets
    c.crckd.growth_rate = 32         # DenseNet-121 (torchvision); tests shrink the four DenseNet keys
    c.crckd.block_config = (6, 12, 24, 16)
    c.crckd.num_init_features = 64
    c.crckd.bn_size = 4
    c.crckd.feat_dim = 128           # fc_layer width (feature4) = embedding width of embed_s/embed_t (s/t/feat_dim)
    c.crckd.teacher_init = "independent"  # (G20) 'independent' own random heads as the code; 'student' = a copy
    c.crckd.ema_decay = 0.99         # mean teacher: alpha_t = min(1 - 1/(t + 1), ema_decay), params only
    c.crckd.teacher_rot_flip = True  # (G4) teacher view also gets a per-sample vflip (p .5) + rot90 k ~ U{0..3}
    c.crckd.augment = True           # both views: RandomAffine(degrees, translate) + RandomHorizontalFlip; False = none
    c.crckd.augment_degrees = 10.0
    c.crckd.augment_translate = 0.02  # max shift as a fraction of width/height, rounded to whole pixels
    c.crckd.nce_p = 20               # positives per anchor (own memory slot + P-1 same-class, no replacement)
    c.crckd.nce_k = 4096             # negatives per anchor (replacement only when the pool is smaller)
    c.crckd.nce_t = 0.07             # temperature of the CCD scores and of the CRP relations
    c.crckd.nce_m = 0.5              # memory momentum: M[i] <- normalize(m M[i] + (1 - m) g_i)
    c.crckd.positive_mode = "multi_pos"  # 'multi_pos' (CRCKD) or 'exact' (1 positive = own slot; 'relax' == exact, G9)
    c.crckd.negative_mode = "sup"    # 'sup': negatives from other classes; 'unsup' (ablation): any other example
    # (G5) memory rows and the N of the noise constant K/N and of Z = mean(exp) * N. -1 = the training-set size;
    # the code's flag is 2929 (right only for APTOS folds 1-2). Must be >= the training-set size.
    c.crckd.n_data = -1
    c.crckd.z_s = -1.0               # Z of student-anchor scores; < 0 = set once from the first step's GLOBAL mean
    c.crckd.z_t = -1.0               # Z of teacher-anchor scores; same rule
    c.crckd.crp_relu_centroids = True  # (G11) ReLU on memory rows before the class mean, as the code
    c.crckd.ccd_weight_pre = 0.1     # CCD weight before begin_distill_epoch (CCD_b4_weight)
    c.crckd.ccd_weight_post = 0.01   # (G2) from begin_distill_epoch: 0.01 = code (0.1 applied twice), 0.1 = readme
    c.crckd.crp_weight = 1.0         # CRP_distill, from begin_distill_epoch
    c.crckd.consistency = 1.0        # mean-teacher KL weight after ramp-up (0 = no MT)
    c.crckd.consistency_rampup_epochs = 30.0  # sigmoid ramp over epochs counted from 0 (G3)
    c.crckd.begin_distill_epoch = 20  # (G3) begin_ema: KL and CRP start here, CCD weight switches to _post
    c.crckd.ce_class_weights = "inverse_frequency"  # (G12) 'inverse_frequency' (N/n_c, weighted mean) or 'none'
    c.crckd.eval_last_n_epochs = 11  # (G17) report the mean of the last N per-epoch evaluations (code: 11, not 10)
    c.crckd.optim = ml_collections.ConfigDict()
    c.crckd.optim.weight_decay = 5e-4  # (G16) COUPLED L2 (torch Adam weight_decay) on every trainable parameter
    c.crckd.optim.max_lr = 3e-4      # OneCycleLR (cosine, two phases), stepped per iteration
    c.crckd.optim.pct_start = 0.3
    c.crckd.optim.div_factor = 25.0  # start lr = max_lr / 25
    c.crckd.optim.final_div_factor = 1e4  # final lr = start lr / 1e4
    c.crckd.optim.base_momentum = 0.85  # Adam beta1 cycles max -> base -> max with the LR
    c.crckd.optim.max_momentum = 0.95
    c.crckd.optim.b2 = 0.999
    c.crckd.optim.eps = 1e-8
    c.crckd.optim.epoch_start_lr = 1e-4  # (G16) code quirk: the first step of every epoch >= 1 uses base_lr; 0 = off
    return c


FPG_VARIANTS = ("spectrum", "radial", "conditional")


def check_kd_args(arg) -> None:
    """The `:arg` checks shared by every benchmark config: fold and the FoPro-KD prompt variant."""
    if not 1 <= arg.fold <= 5:
        raise ValueError(f"fold must be in 1..5, got {arg.fold}")
    if arg.fpg not in FPG_VARIANTS:
        raise ValueError(f"fpg must be one of {FPG_VARIANTS}, got {arg.fpg!r}")


def apply_kd_method(config, arg) -> str:
    """Sets method, teacher and FPG keys of a 'fopro' / 'ekd' / 'bsm' run; returns its name tag.

    The tag reads `<method>[_<fpg variant>[_noakd]]_<teacher>`, e.g. `fopro_radial_noakd_moco_r50`.
    """
    from foprokd_jax.models import teachers

    spec = teachers.get_teacher_spec(arg.teacher)  # ValueError listing the registered names
    config.method = arg.method
    config.fpg.variant = arg.fpg
    config.fpg.lambda_adv = config.fpg.lambda_adv if arg.akd else 0.0
    config.teacher.update(dict(name=spec.name, artifact=spec.default_artifact, arch=spec.arch,
                               feature_key=spec.feature_key))
    variant = f"_{arg.fpg}{'' if arg.akd else '_noakd'}" if arg.method == "fopro" else ""
    return f"{arg.method}{variant}_{spec.name}"


def apply_kd_runlocal(config, teacher: str) -> None:
    """`runlocal`: tiny shapes and a few steps for a ResNet-student run (smoke tests, laptops)."""
    from foprokd_jax.models import teachers

    # A ViT needs a multiple of its 14-px patch: 28 px = 2x2 patches (the artifact is converted at 28).
    config.input.image_size = 28 if teachers.get_teacher_spec(teacher).family == "vit" else 32
    config.input.batch_size = 8
    config.input.eval_batch_size = 16
    config.student.width = 8
    config.student.stage_sizes = (1, 1, 1, 1)
    config.total_steps = 4
    config.eval_every_steps = 2
    config.log_every_steps = 1
