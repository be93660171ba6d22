"""pyalexnet: AlexNet from scratch, every layer a hand-written CUDA kernel.

Backends (see pyalexnet.backends): ``numpy`` runs the NumPy reference of each op, ``emu``
runs the CUDA kernels on the CPU through a host-emulation layer, ``cuda`` runs them on an
NVIDIA GPU through CuPy. Importing pyalexnet never imports CuPy.
"""
from .backends import BackendUnavailable, KernelError, get_backend

__version__ = "0.1.0"
__all__ = ["get_backend", "BackendUnavailable", "KernelError", "__version__"]
