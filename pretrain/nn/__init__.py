"""The model, in plain PyTorch: the decoder (model.py) and activation checkpointing per block
(activation_checkpointing.py). The kernels it can run are tabled in kernels/backends.py.
Parallelism is applied from outside, by pretrain/parallel/."""
