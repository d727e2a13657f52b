"""The command line: every subcommand's --help renders (argparse formats help lazily, so a stray '%' only
fails when a user asks for help)."""

import argparse
import os

from vla_driver.cli import build_parser


def _parsers(parser: argparse.ArgumentParser, prog: str = "vla-driver"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_subcommand_help_renders():
    seen = []
    for prog, parser in _parsers(build_parser()):
        text = parser.format_help()
        assert text.startswith("usage:"), prog
        seen.append(prog)
    assert {"vla-driver train-rl", "vla-driver bench rl-gain", "vla-driver eval"} <= set(seen)


def test_train_rl_refuses_a_negative_collision_penalty_before_loading_anything(tmp_path, capsys):
    args = build_parser().parse_args(["train-rl", "--from", str(tmp_path / "none"), "--out", str(tmp_path / "rl"),
                                      "--collision-penalty", "-1", "--headway", "1.5"])
    assert args.func(args) == 2
    assert "collision_penalty" in capsys.readouterr().out
    assert not (tmp_path / "rl").exists()
    args = build_parser().parse_args(["train-rl", "--from", str(tmp_path / "none"), "--out", str(tmp_path / "rl"),
                                      "--blocked-penalty", "-0.5"])
    assert args.func(args) == 2 and "blocked_penalty" in capsys.readouterr().out


def test_policy_threads_share_the_cores_out_among_workers_unless_told():
    from vla_driver.cli.common import policy_threads

    cores = len(os.sched_getaffinity(0))
    parser = build_parser()
    for argv, expected in ((["eval"], cores), (["eval", "--workers", "2"], max(1, cores // 2)),
                           (["eval", "--workers", "2", "--threads", "3"], 3),
                           (["gate", "a", "b", "--workers", str(cores + 1)], 1),
                           (["record-expert", "--out", "x"], cores)):
        assert policy_threads(parser.parse_args(argv)) == expected, argv


def test_the_command_list_names_exactly_the_registered_commands():
    from vla_driver.cli import COMMANDS

    registered = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(registered) == set(COMMANDS)
    lazy = next(a for a in build_parser("eval")._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(lazy) == set(COMMANDS)
