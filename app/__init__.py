"""The Textual chat for RxT models (installed as ``rxt_app``)."""
