"""GloRo nets in PyTorch: bounded layers, certification head, training, certification, export."""
