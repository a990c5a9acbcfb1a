"""What the two command lines (``elevator``, ``elevator-server``) share: a parser whose
errors are one line, and argument types made from :mod:`args`'s checks, so that a flag
is refused by the same rule, with the same message, as the Python argument it sets."""
from __future__ import annotations

import argparse
from typing import Any, Callable, NoReturn, Optional, TypeVar

__all__ = ["Parser", "arg_type"]

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, no usage dump, exit code 2: easy to
    read in a terminal or a supervisor's log. ``error_prog`` starts the line (default
    ``prog``; a subcommand's parser may give its program's name)."""

    def __init__(self, *args: Any, error_prog: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_prog = error_prog or self.prog

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.error_prog}: error: {message} (see --help)\n")


def arg_type(name: str, check: Callable[..., T], *, convert: Callable[[str], Any] = int,
             expected: str = "an integer", **bounds: Any) -> Callable[[str], T]:
    """An argparse ``type``: ``convert(text)`` (a ValueError from it means the text is not
    ``expected``), then ``check(name, value, **bounds)`` (an :mod:`args` check); either
    failure is an ``ArgumentTypeError`` with the check's message, which names ``name``
    (the option's Python name) and the given value."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {expected}, not {text!r}") from None
        try:
            return check(name, value, **bounds)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse
