"""NIR / PyTorch layouts to Lava's (docs/lava-fixed-point.md section 4.1): Lava's conv populations are
(X, Y, C) = (W, H, C) where NIR's are (C, H, W), i.e. every axis reversed, and Lava's Conv is a true
convolution."""
import numpy as np


def lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[::-1])


def lava_conv_weight(weight: np.ndarray) -> np.ndarray:
    """PyTorch's cross-correlation [C_out, C_in, kH, kW] -> Lava's true convolution (C_out, kX, kY, C_in):
    both kernel axes flipped, then the axes reordered."""
    return np.ascontiguousarray(np.asarray(weight)[:, :, ::-1, ::-1].transpose(0, 3, 2, 1), dtype=np.int32)
