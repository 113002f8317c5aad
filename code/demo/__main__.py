"""`python -m demo` (with code/ on the path; `make demo` does this): the whole method on the simulated brain."""

from demo.cli import main
from errors import run_main

run_main(main)
