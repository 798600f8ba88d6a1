"""Test-session set-up shared by every test module."""

# Importing rxt_mlx first loads the optimised BLAS (rxt_mlx.blas) before any test module imports
# MLX, so this process computes with the same BLAS as the rxt-* subprocesses that tests start.
import rxt_mlx  # noqa: F401
