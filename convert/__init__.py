"""RxT PyTorch reference, checkpoint conversion and training (installed as ``rxt_convert``)."""
