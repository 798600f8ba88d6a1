"""Measuring tools beside the inference core: ``rxt-bench`` (per-turn latency against stateless
baselines) and ``rxt-eval`` (memory recall and perplexity on generated dialogues).

They import the core (:mod:`rxt_mlx`), never the other way round. ``dialogues`` is also the
training data of ``rxt-train``: it needs neither MLX nor PyTorch, so both sides import it.
"""
