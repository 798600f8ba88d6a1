"""Test-session set-up shared by every test module."""

# Load the optimised BLAS (rxt_mlx.blas) before any test module imports MLX, so this process
# computes with the same BLAS as the rxt-* commands that tests start as subprocesses.
from rxt_mlx.blas import preload_optimised_blas

preload_optimised_blas()
