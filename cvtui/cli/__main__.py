"""`python -m cvtui.cli`: the `cvtui` command."""

from cvtui.cli import console_main

console_main()
