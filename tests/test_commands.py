"""The one shape of every command (editalign.commands) and the data options declared once."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from editalign.commands import COMMANDS
from editalign.data.arguments import add_data_arguments
from editalign.data.labeling import GRANULARITIES
from editalign.data.presets import PRESETS
from editalign.loop.config import stage_commands

# The commands that read edit pairs, and the data options each takes.
DATA_OPTIONS = {"label": ["data", "preset", "field", "split", "limit", "strict", "max_length"],
                "score": ["data", "preset", "limit", "max_length"],
                "revise": ["data", "preset", "field", "split", "limit", "strict"],
                "annotate": ["data", "preset", "field", "split", "limit"]}


def test_every_command_has_the_one_shape_and_is_in_the_table():
    import editalign.commands as package

    modules = {m.name for m in __import__("pkgutil").iter_modules(package.__path__)}
    assert set(COMMANDS.modules) == {m for m in modules if m != "common"} - {"evaluate"} | {"eval"}
    for name, module in COMMANDS.modules.items():
        assert name == module.NAME
        assert isinstance(module.HELP, str) and module.HELP
        assert callable(module.add_arguments) and callable(module.run)
    # the loop's stages are the table's own modules, not copies
    assert all(stage_commands().modules[n] is COMMANDS.modules[n]
               for n in stage_commands().modules)


def test_help_lists_the_commands_in_the_tables_order(capsys):
    parser, _ = COMMANDS.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    positions = [text.index(f"\n    {name} ") for name in COMMANDS.modules]
    assert positions == sorted(positions)


@pytest.mark.parametrize("command", sorted(DATA_OPTIONS))
def test_data_options_are_the_same_everywhere(command):
    parser = COMMANDS.parsers()[command]
    actions = {a.dest: a for a in parser._actions}
    for dest in DATA_OPTIONS[command]:
        assert dest in actions, (command, dest)
    assert list(actions["preset"].choices) == list(PRESETS)  # from the table, not a literal
    if "max_length" in actions:  # one spelling, the trainers' one accepted too
        assert actions["max_length"].option_strings == ["--max-length", "--max_length"]
        args = parser.parse_args(["--max_length", "7"] if command != "annotate" else [])
        assert args.max_length == 7
    if "field" in actions:
        assert actions["field"].option_strings == ["--field"]


def test_add_data_arguments_takes_types_and_defaults_from_data_arguments():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, ["limit", "strict", "max_length", "granularity", "field_map"],
                       help={"limit": "score only the first N pairs"},
                       defaults={"max_length": 0})
    args = parser.parse_args([])
    assert (args.limit, args.strict, args.max_length, args.granularity, args.field) == (
        None, False, 0, "token", [])
    args = parser.parse_args(["--limit", "3", "--strict", "--granularity", "word",
                              "--field", "a=b", "--field", "c=d"])
    assert (args.limit, args.strict, args.granularity, args.field) == (3, True, "word",
                                                                        ["a=b", "c=d"])
    choices = {a.dest: a.choices for a in parser._actions}
    assert list(choices["granularity"]) == list(GRANULARITIES)
    with pytest.raises(SystemExit):
        parser.parse_args(["--limit", "three"])
    assert {a.dest: a.help for a in parser._actions}["limit"] == "score only the first N pairs"


def test_a_command_run_in_process_has_the_clis_exit_codes(tmp_path, capsys):
    # a data error is one line and exit 2, through the same table the loop uses
    code = stage_commands().run(["label", "--data", str(tmp_path / "none.jsonl"),
                                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "editalign label: error: --data" in capsys.readouterr().err


def test_help_loads_no_torch():
    """Every command module is imported for `editalign --help`: their heavy imports wait
    for `run`, so the help (and a typo's usage line) comes without loading torch."""
    code = ("import sys; from editalign.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_run_into_a_log_file_prints_no_weight_loading_bars(tmp_path):
    """Not a terminal (stderr piped, as under nohup or the loop): no "Loading weights" bars
    from transformers; a terminal keeps them (the variable is only a default)."""
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "Q?", "original": "a red cat", "revised": "a blue cat"}\n')
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    proc = subprocess.run(
        [sys.executable, "-m", "editalign.cli", "train", "sft", "--model", "tiny", "--data",
         str(data), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
         "--report_to", "none", "--save_strategy", "no"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr
