"""labctl's argument parsing: options anywhere before `--`, the command after it."""

from __future__ import annotations

import pytest

from labctl.cli import parse_args


@pytest.mark.parametrize("argv", [
    ["exec", "andy", "--privileged", "--", "id"],  # README's order: it ran `--privileged` (rc 126)
    ["exec", "--privileged", "andy", "--", "id"],
    ["exec", "andy", "--lab", "l1", "--privileged", "--", "id"],
    ["exec", "--lab", "l1", "andy", "--privileged", "--", "id"],
])
def test_exec_options_go_anywhere_before_the_double_dash(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.host, args.cmd, args.privileged) == ("andy", ["id"], True)


def test_after_the_double_dash_nothing_is_an_option_of_labctl() -> None:
    args = parse_args(["exec", "andy", "--lab", "l1", "--", "ls", "--lab", "--", "-l"])
    assert (args.lab, args.cmd, args.privileged) == ("l1", ["ls", "--lab", "--", "-l"], False)
    assert parse_args(["exec", "andy", "id"]).cmd == ["id"]  # a command without options needs no `--`


def test_a_command_with_options_but_no_double_dash_is_told_where_it_goes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["exec", "andy", "ls", "-l"])
    assert exited.value.code == 2
    assert "put the command to run after `--`: labctl exec HOST -- ls -l" in capsys.readouterr().err


def test_other_commands_keep_argparse_s_double_dash() -> None:
    assert parse_args(["trace", "--", "<1@andy.ouhk.example>"]).message_id == "<1@andy.ouhk.example>"
    assert parse_args(["logs", "ns", "--lab", "l1"]).lab == "l1"


@pytest.mark.parametrize("argv", [
    ["mailbox", "betty", "--imap", "1"],  # README's order: it stopped at "unrecognized arguments: 1"
    ["mailbox", "betty", "1", "--imap"],
    ["mailbox", "--imap", "betty", "1"],
    ["mailbox", "betty", "--imap", "--peek", "1"],
])
def test_the_message_number_goes_after_the_flags_too(argv: list[str]) -> None:
    args = parse_args(argv)
    assert (args.user, args.number, args.imap) == ("betty", 1, True)


def test_a_word_left_over_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["mailbox", "betty", "--imap", "one"], ["mailbox", "betty", "1", "--imap", "2"],
                 ["status", "7"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        assert exited.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
