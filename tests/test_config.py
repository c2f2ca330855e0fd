import pytest

from tlearn.config import TrainConfig, read_config_file
from tlearn.errors import TlearnError


def test_defaults_validate():
    cfg = TrainConfig(data="x").validate()
    assert cfg.backbone == ["tf_efficientnet_lite0"]
    assert cfg.hidden_sizes == (256, 128)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"epochs": 0}, "--epochs"),
        ({"head": "conv"}, "--head"),
        ({"strategy": "freeze"}, "freeze:N"),
        ({"strategy": "freeze:x"}, "freeze:N"),
        ({"lr": -1.0}, "--lr"),
        ({"val_split": 0.95}, "--val-split"),
        ({"head": "mlp", "hidden": "0,5"}, "--hidden"),
        ({"device": "tpu"}, "--device"),
        ({"data": ""}, "no dataset"),
    ],
)
def test_bad_options_name_the_flag(options, fragment):
    values = {"data": "x", **options}
    with pytest.raises(TlearnError, match=fragment):
        TrainConfig.from_dict(values).validate()


def test_freeze_n_parses():
    cfg = TrainConfig(data="x", strategy="freeze:3").validate()
    assert cfg.strategy_kind == "freeze" and cfg.frozen_stages == 3


def test_default_lr_depends_on_strategy_and_optimizer():
    probe = TrainConfig(data="x", strategy="linear-probe", optimizer="sgd")
    tune = TrainConfig(data="x", strategy="finetune", optimizer="sgd")
    assert probe.resolved_lr() > tune.resolved_lr()
    assert TrainConfig(data="x", lr=0.123).resolved_lr() == 0.123


def test_step_defaults_follow_what_trains():
    """A head on cached features defaults to bigger, cheaper steps; anything else to 128 x 5;
    whatever the user set stays."""
    head = TrainConfig(data="x", strategy="linear-probe", features="last").validate()
    head.resolve_step_defaults("linear-probe")
    assert (head.batch_size, head.epochs) == (256, 6)
    assert head.lr == pytest.approx(3e-3 * 2**0.5, rel=1e-4)
    # stage features (the default for a frozen backbone) are wider: fewer, dearer epochs
    stages = TrainConfig(data="x", strategy="linear-probe").validate()
    stages.resolve_step_defaults("linear-probe")
    assert (stages.batch_size, stages.epochs) == (256, 3)
    # flips are cached too; crops change the pixels every epoch, so images it is
    flips = TrainConfig(data="x", augment="flip")
    flips.resolve_step_defaults("linear-probe")
    assert flips.batch_size == 256
    for cfg, strategy in [
        (TrainConfig(data="x", augment="light"), "linear-probe"),
        (TrainConfig(data="x", mixup=0.2), "linear-probe"),
        (TrainConfig(data="x"), "finetune"),
        (TrainConfig(data="x"), "freeze:2"),
    ]:
        cfg.resolve_step_defaults(strategy)
        assert (cfg.batch_size, cfg.epochs, cfg.lr) == (128, 5, None)
    mine = TrainConfig(data="x", batch_size=64, epochs=3)
    mine.resolve_step_defaults("linear-probe")
    assert (mine.batch_size, mine.epochs, mine.lr) == (64, 3, None)
    with pytest.raises(TlearnError, match="--batch-size"):
        TrainConfig(data="x", batch_size=0).validate()


def test_unknown_option_in_file_is_refused(tmp_path):
    with pytest.raises(TlearnError, match="unknown option 'epoch'"):
        TrainConfig.from_dict({"data": "x", "epoch": 3})


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(data="d", backbone=["resnet18", "tf_efficientnet_lite0"], epochs=3)
    cfg.save_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_dict(read_config_file(tmp_path / "c.yaml"))
    assert again == cfg


def test_config_file_accepts_dashes_and_scalars(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data: d\nbackbone: resnet18\nbatch-size: 16\nhidden: [64, 32]\n")
    cfg = TrainConfig.from_dict(read_config_file(p)).validate()
    assert cfg.backbone == ["resnet18"] and cfg.batch_size == 16 and cfg.hidden == "64,32"


def test_broken_config_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: [unclosed\n")
    with pytest.raises(TlearnError, match="could not be read"):
        read_config_file(p)
    with pytest.raises(TlearnError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")
