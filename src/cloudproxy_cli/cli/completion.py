"""`cloudproxy completion SHELL`: the shell's completion script, to source or install."""

from __future__ import annotations

from typing import Annotated

import typer

# Typer has no public API for the script text; its --show-completion uses this same function.
from typer._completion_shared import Shells, get_completion_script

from cloudproxy_cli.cli.results import TextResult

PROG = "cloudproxy"
COMPLETE_VAR = "_CLOUDPROXY_COMPLETE"  # what the script sets when it asks for completions


def completion(
    shell: Annotated[Shells, typer.Argument(help="The shell to print the script for.")],
) -> TextResult:
    """Print the shell completion script (also: --install-completion, --show-completion).

    Examples: [bold]eval "$(cloudproxy completion bash)"[/bold] (in ~/.bashrc) ·
    [bold]cloudproxy completion fish > ~/.config/fish/completions/cloudproxy.fish[/bold]
    """
    script = get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell.value)
    return TextResult(script + "\n")
