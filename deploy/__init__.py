"""Running compiled SDDPM networks on Lava (CPU simulation, fixed_pt) and Loihi 2."""
