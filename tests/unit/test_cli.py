"""The `manylabel` root: every command listed, only the running command's application imported."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from service import cli


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help for a in sub._choices_actions}


def test_the_commands_table_is_what_the_applications_register() -> None:
    eager = _helps(cli.build_parser())  # every module imported, every parser whole
    apps = (cli.TRAINING, cli.SERVING)
    table = {name: text for app in apps for cmds in app.values() for name, text in cmds.items()}
    assert eager == table
    assert _helps(cli.build_parser([])) == table  # `manylabel --help` lists the same, importing none


@pytest.mark.parametrize("command", ["train", "stats", "batch"])
def test_only_the_running_commands_application_is_imported(command: str) -> None:
    modules = ["training.cli", "service.inspect.cli", "service.batch.cli", "service.server.cli"]
    code = (
        "import sys; from service.cli import build_parser; "
        f"build_parser([{command!r}, '--help-not-parsed']); "
        f"print(','.join(m for m in {modules!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    owner = next(m for app in (cli.TRAINING, cli.SERVING) for m, names in app.items() if command in names)
    assert out.strip() == owner


def test_a_lazily_built_parser_parses_its_command_whole(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["batch", "--url", "http://x", "--images", "i", "--output", "o"]
    args = cli.build_parser(argv[:1]).parse_args(argv)
    assert args.url == "http://x" and args.func is not None
    with pytest.raises(SystemExit):
        cli.main(["nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
