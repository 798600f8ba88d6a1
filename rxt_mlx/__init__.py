"""RxT (Reactive Transformer) inference on MLX."""
