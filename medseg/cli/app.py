"""The root `medseg` group: global options, logging, and the registration of every command group."""

from __future__ import annotations

import logging

import click

from medseg import __version__
from medseg.cli.errors import ErrorReportingGroup

__all__ = ["main"]

log = logging.getLogger("medseg")


def _configure_logging(verbose: int, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    handler = RichHandler(show_time=False, show_path=False, markup=False, console=Console(stderr=True))
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int, quiet: bool) -> None:
    """medseg: chest CT and chest X-ray pipeline with exact geometry."""
    ctx.ensure_object(dict)
    ctx.obj.update(debug=debug, quiet=quiet)
    _configure_logging(verbose, quiet)


def _register_subcommands() -> None:
    from medseg.cli.classify import classify
    from medseg.cli.data import data
    from medseg.cli.evaluate import evaluate
    from medseg.cli.io import convert, info
    from medseg.cli.review import review
    from medseg.cli.segment import segment
    from medseg.cli.synth import synth
    from medseg.cli.train import train
    from medseg.cli.workflow import run, validate

    for command in (convert, info, synth, data, evaluate, train, segment, classify, validate, run, review):
        main.add_command(command)


_register_subcommands()
