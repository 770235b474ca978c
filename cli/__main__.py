"""`python -m ragtune.cli`: what the distributed launcher runs on every rank."""

from ragtune.cli import main

main()
