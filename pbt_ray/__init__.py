"""pbt-ray: Persuasion-Balanced Training on Ray."""

__version__ = "0.1.0"
