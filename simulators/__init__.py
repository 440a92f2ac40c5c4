"""Bit-accurate vectorized simulator of the Lava/Loihi 2 fixed-point dynamics."""
