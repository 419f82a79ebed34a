"""Every config builds for each `:arg` combination, is locked, and rejects typos and bad values."""

import itertools

import pytest

from configs import common, demo, isic


@pytest.mark.parametrize(
    "method,imb,fold", list(itertools.product(["fopro", "ekd", "bsm"], ["0.01", "0.005", "0.002"], [1, 2, 3, 4, 5]))
)
def test_isic_config_builds_for_every_split(method, imb, fold):
    config = isic.get_config(f"method={method},imb={imb},fold={fold}")
    assert (config.method, config.input.imb, config.input.fold) == (method, imb, fold)
    # The reference EKD settings (docs/reference_semantics.md §10).
    assert config.optim.lr == 3e-4 and config.optim.clip_norm == 5.0 and config.optim.weight_decay == 0.0
    assert config.input.batch_size == 32 and config.input.image_size == 224 and config.total_epochs == 100
    assert config.loss.name == "bsm"
    # Exactly the subtrees the method reads (foprokd_jax/methods/<method>/config.py).
    expected = {
        "bsm": {"student", "loss", "optim"},
        "ekd": {"student", "loss", "optim", "teacher"},
        "fopro": {"student", "loss", "optim", "teacher", "fpg"},
    }[method]
    subtrees = {key for key in config.keys() if hasattr(config[key], "keys")} - {"input", "eval"}
    assert subtrees == expected
    assert ("free_u" in config.loss) == (method != "bsm")
    if method != "bsm":
        assert config.loss.free_u == 3.0
    with pytest.raises(AttributeError):
        config.input.bach_size = 8  # locked: typos fail instead of silently adding a key


@pytest.mark.parametrize(
    "arg,variant,lambda_adv",
    [
        ("method=fopro", "spectrum", 1.0),
        ("fpg=radial,akd=False", "radial", 0.0),
        ("fpg=conditional", "conditional", 1.0),
    ],
)
def test_fopro_ablation_arguments(arg, variant, lambda_adv):
    config = isic.get_config(arg)
    assert config.method == "fopro" and config.fpg.variant == variant and config.fpg.lambda_adv == lambda_adv


def test_runlocal_shrinks_everything():
    config = isic.get_config("runlocal")
    assert config.input.image_size <= 64 and config.total_steps > 0 and config.student.width < 64


@pytest.mark.parametrize(
    "arg", ["imb=0.3", "fold=6", "method=foo", "teacher=clip", "folds=1", "fold", "fpg=phase", "akd=maybe"]
)
def test_isic_config_rejects_bad_arguments(arg):
    with pytest.raises((KeyError, ValueError)):
        isic.get_config(arg)


def test_demo_config_and_parse_arg_types():
    config = demo.get_config()
    assert config.demo and config.demo_methods == "bsm+ekd+fopro" and config.total_steps > 0
    parsed = common.parse_arg("a=3,b=0.5,c=x,d", a=1, b=0.1, c="y", d=False)
    assert (parsed.a, parsed.b, parsed.c, parsed.d) == (3, 0.5, "x", True)


@pytest.mark.parametrize(
    "key,value", [("input.augment", "flamby"), ("eval.protocol", "test_test"), ("teacher.dtype", "float16")]
)
def test_training_refuses_unknown_choices_before_touching_the_workdir(key, value, tmp_path):
    from foprokd_jax import train

    config = isic.get_config("runlocal")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=key):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_every_method_config_holds_only_its_own_keys():
    from configs import aptos
    from foprokd_jax import methods

    crckd = aptos.get_config("method=crckd")
    assert "crckd" in crckd and not {"student", "teacher", "loss", "optim", "fpg"} & set(crckd.keys())
    assert "augment" not in crckd.input  # CRCKD's two-view augmentation is crckd.augment*
    for name in methods.method_names():
        config = common.method_config(name)
        assert config.method == name
        methods.get_method(name).validate(config)
