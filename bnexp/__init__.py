"""bnexp: reproduce the Batch Normalization paper (Ioffe & Szegedy, 2015) and go beyond it."""

__version__ = "0.1.0"
