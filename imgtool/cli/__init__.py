"""The command line: the only part of imgtool that imports typer and prints.

Command modules import the domain inside each command, not at the top: `imgtool --help`
then loads typer and a few pure modules only, and starts in well under 0.3 s.
"""
