"""One module per op family: the NumPy reference and the kernel launcher side by side.

Every op function takes the backend first and backend-native arrays (NumPy for ``numpy``
and ``emu``, CuPy for ``cuda``); on the ``numpy`` backend it runs the reference. The
references (``*_reference``) are dtype-generic, so gradient checks run them in float64.
"""
