"""Command-line interface (placeholder while the commands land)."""

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """FleetWarden: IoT fleet security."""


def main() -> None:
    app()
