from labctl.cli import run

run()
