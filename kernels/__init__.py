"""Compute kernels: Triton kernels with their autograd wrappers, and the plain-PyTorch
references (`kernels.reference`) they are tested against and the model's eager path uses."""
