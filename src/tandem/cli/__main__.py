"""`python -m tandem.cli ...` and `accelerate launch -m tandem.cli train ...`."""

from tandem.cli import app

app(prog_name="tandem")
