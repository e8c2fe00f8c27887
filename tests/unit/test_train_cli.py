"""`manylabel train` / `demo` flags are generated from TrainConfig: one declaration, one default."""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from training.cli import config_from_args, flag, register
from training.config import TrainConfig

# Flags users and docs already rely on: renaming a TrainConfig field must not silently drop one.
EXISTING_FLAGS = [
    "--name",
    "--minutes",
    "--include",
    "--exclude",
    "--val-size",
    "--val-labels",
    "--lr",
    "--seed",
    "--head",
    "--max-epochs",
    "--patience",
    "--folds",
    "--threshold-source",
    "--cache-dir",
    "--workdir",
    "--device",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manylabel")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _actions(command: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in _subparser(command)._actions}


@pytest.mark.parametrize("command", ["train", "demo"])
def test_every_field_is_a_flag_with_its_default_type_and_choices(command: str) -> None:
    actions = _actions(command)
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        action = actions[f.name]
        assert action.option_strings == [flag(f.name)]
        assert action.help and f.metadata["help"].replace("%", "%%") in action.help
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Literal:
            assert action.choices == list(typing.get_args(hint)) and action.type is str
        elif typing.get_origin(hint) is list:
            assert action.nargs == "+" and action.type is str
        else:
            plain = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            assert action.type is plain[0] and action.choices is None
        expected = 1.0 if (command, f.name) == ("demo", "minutes") else getattr(defaults, f.name)
        assert _subparser(command).get_default(f.name) == expected


def test_existing_flag_names_are_kept() -> None:
    options = {s for a in _subparser("train")._actions for s in a.option_strings}
    assert set(EXISTING_FLAGS) <= options
    assert {"--images", "--labels"} <= options  # inputs, not config fields
    assert not {"images", "labels"} & {f.name for f in fields(TrainConfig)}


def test_defaults_parse_to_the_default_config() -> None:
    args = _parser().parse_args(["train", "--images", "imgs", "--labels", "l.csv"])
    assert config_from_args(args) == TrainConfig()
    assert args.images == ["imgs"] and args.labels == Path("l.csv")
    assert config_from_args(_parser().parse_args(["demo"])) == TrainConfig(minutes=1.0)


def test_a_command_line_parses_to_the_expected_config() -> None:
    argv = [
        "train",
        "--images",
        "a",
        "b",
        "--labels",
        "l.csv",
        "--name",
        "shop",
        "--minutes",
        "2",
        "--include",
        "cat",
        "dog",
        "--exclude",
        "bird",
        "--val-labels",
        "val.csv",
        "--lr",
        "3e-3",
        "--weight-decay",
        "0.01",
        "--l2",
        "0.5",
        "--batch-size",
        "16",
        "--max-epochs",
        "7",
        "--patience",
        "0",
        "--head",
        "linear",
        "--hidden",
        "64",
        "--dropout",
        "0.1",
        "--folds",
        "3",
        "--threshold-source",
        "validation",
        "--min-positives",
        "2",
        "--seed",
        "4",
        "--feature-batch",
        "8",
        "--workers",
        "1",
        "--cache-dir",
        "c",
        "--workdir",
        "w",
        "--device",
        "cpu",
    ]
    cfg = config_from_args(_parser().parse_args(argv))
    assert cfg == TrainConfig(
        name="shop",
        minutes=2.0,
        include=["cat", "dog"],
        exclude=["bird"],
        val_size=0.2,
        val_labels=Path("val.csv"),
        lr=3e-3,
        weight_decay=0.01,
        l2=0.5,
        batch_size=16,
        max_epochs=7,
        patience=0,
        head="linear",
        hidden=64,
        dropout=0.1,
        folds=3,
        threshold_source="validation",
        min_positives=2,
        seed=4,
        feature_batch=8,
        workers=1,
        cache_dir=Path("c"),
        workdir=Path("w"),
        device="cpu",
    )
    assert isinstance(cfg.minutes, float) and isinstance(cfg.max_epochs, int)


def test_val_size_and_val_labels_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["demo", "--val-size", "0.3", "--val-labels", "v.csv"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["demo", "--head", "tree"], ["demo", "--device", "tpu"], ["demo", "--max-epochs", "1.5"]]
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(argv)


def test_help_renders_for_both_commands() -> None:
    for command in ("train", "demo"):
        text = _subparser(command).format_help()
        assert "--threshold-source {oof,train,validation}" in text
    assert "(default 1.0)" in _subparser("demo").format_help()  # demo's own budget is shown


def test_configs_do_not_share_list_defaults() -> None:
    first, second = TrainConfig(), TrainConfig()
    first.include.append("cat")
    assert second.include == [] and TrainConfig().include == []


def test_a_field_type_without_a_command_line_form_is_refused() -> None:
    from training.cli import _argparse_type

    with pytest.raises(TypeError, match="no command-line form"):
        _argparse_type(dict[str, int])
