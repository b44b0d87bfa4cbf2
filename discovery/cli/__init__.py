"""The ``circuits`` command line: thin shells over library calls, one module per area.

Errors a user can act on (:class:`~discovery.errors.CircuitsError`) are printed as one line and exit
1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from discovery.cli import (
    eval_commands,
    patch_commands,
    reference_commands,
    search_commands,
    service_commands,
    store_commands,
    task_commands,
)
from discovery.cli.common import err_console
from discovery.errors import CircuitsError

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
    task_commands,
):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        app(args=args, prog_name="circuits", standalone_mode=False)
    except CircuitsError as e:
        if debug:
            raise
        err_console.print(f"error: {e}", style="bold red")
        sys.exit(1)
    except Exception as e:  # click's usage errors are printed by click itself
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
