"""The ``circuits`` command line: thin shells over library calls, one module per area.

Exit codes: 0 done; 1 the work failed (a failed job, the database or broker failing:
:class:`~discovery.types.errors.CircuitsError`); 2 bad usage (a missing or mistyped option or command,
a bad value: click's usage errors, :class:`~discovery.types.errors.UsageError`, any ``ValueError``);
130 interrupted (Ctrl-C). Every error is one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import typer

from discovery.cli import (
    dashboard_commands,
    eval_commands,
    patch_commands,
    reference_commands,
    search_commands,
    service_commands,
    store_commands,
    task_commands,
)
from discovery.cli.common import err_console
from discovery.types.errors import CircuitsError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Find, score, store and compare circuits in transformer language models.",
)

for module in (
    eval_commands,
    patch_commands,
    search_commands,
    store_commands,
    service_commands,
    reference_commands,
    dashboard_commands,
    task_commands,
):
    module.register(app)


def _version(value: bool) -> None:
    if value:
        from discovery import __version__

        typer.echo(f"circuits {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Find, score, store and compare circuits in transformer language models."""


def _fail(message: str, code: int) -> None:
    first = " ".join(str(message).split())  # one line, whatever the message held
    err_console.print(f"error: {first}", style="bold red")
    sys.exit(code)


def _click_exceptions() -> Any:
    """The click exceptions typer raises: its vendored copy (typer >= 0.26) or click's own."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main(argv: list[str] | None = None) -> None:
    from discovery.types.errors import UsageError

    click = SimpleNamespace(exceptions=_click_exceptions())

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        rc = app(args=args, prog_name="circuits", standalone_mode=False)
    except typer.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        if debug:
            raise
        err_console.print("interrupted")
        sys.exit(130)
    except KeyboardInterrupt:
        if debug:
            raise
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.ClickException as e:  # usage errors: missing option, unknown command, bad value
        if debug:
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `circuits`: the help, not an error line
            e.show()
            sys.exit(2)
        _fail(e.format_message(), 2 if isinstance(e, click.exceptions.UsageError) else e.exit_code)
    except UsageError as e:
        if debug:
            raise
        _fail(str(e), 2)
    except CircuitsError as e:
        if debug:
            raise
        _fail(str(e), 1)
    except ValueError as e:  # a bad value that slipped past the checks: still the user's input, one line
        if debug:
            raise
        _fail(f"{e} (--debug shows where)", 2)
    # standalone_mode=False returns what typer.Exit carried instead of exiting with it. Success
    # returns (the console script then exits 0), so main() can also be called in-process.
    if isinstance(rc, int) and rc != 0:
        sys.exit(rc)


if __name__ == "__main__":
    main()
