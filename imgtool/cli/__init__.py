"""The command line: the only part of imgtool that imports typer and prints."""
