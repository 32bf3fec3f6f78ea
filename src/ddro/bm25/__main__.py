"""`python -m ddro.bm25` = `ddro bm25`."""
from .cli import main

main()
