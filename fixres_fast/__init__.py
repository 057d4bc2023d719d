"""fixres-fast: train at a low resolution, adapt cheaply to a higher test resolution (FixRes)."""

__version__ = "0.1.0"
