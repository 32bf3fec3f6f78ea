"""`ddro instances`: training instances for the three SFT stages, and the eval files (see build.py)."""
from .build import InstancesArguments, main, run

__all__ = ["InstancesArguments", "main", "run"]
