"""Training: the one loop (`loop`), what it minimises (`objective`), precision, checkpoints, callbacks.

Also the process-wide torch setup (`runtime`), the terminal progress bars (`progress`) and the
XDistillation autoencoder stage (`autoencoder`). Import the submodule you need.
"""
