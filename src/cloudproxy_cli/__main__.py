"""`python -m cloudproxy_cli` runs the command-line interface."""

from cloudproxy_cli.cli.app import main

main()
