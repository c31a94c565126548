"""Triton kernels for memory-bound steps of the model (CUDA only), one module per kernel.

    cross_entropy  per-row cross-entropy and its softmax gradient, written over the logits
                   (the fused head of loss.py)
    rope           q and k rotated out of the fused qkv projection, and the qkv gradient
                   (attention.py)

Each module holds, in this order:
* its launch shape and ``AVAILABLE``: Triton installed, a CUDA device, and the kernel's
  environment switch not "0" (``RAYFLEET_CE_KERNEL``, ``RAYFLEET_ROPE_KERNEL``: the way back
  to the PyTorch path for A/B runs), decided once at import;
* its ``@triton.jit`` functions, defined only where ``AVAILABLE``, at module level because a
  Triton kernel finds the helpers it calls among its module's globals;
* ``_register()``: the ``torch.library.triton_op`` custom ops that launch them, so eager and
  ``torch.compile`` run the same kernels; it returns the raw kernels (bench/ times launch
  shapes on them);
* ``handles(x)``: whether the kernel computes this input as exactly as the PyTorch path, which
  the caller keeps where it says no;
* the function the model calls.
"""
