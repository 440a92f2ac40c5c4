"""The top layer: the `sddpm` command and the verification ladder. It may import every package
(sddpm, export, simulators, deploy); none of them imports it."""
