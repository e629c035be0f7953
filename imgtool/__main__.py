"""python -m imgtool"""

from imgtool.cli.main import run

run()
