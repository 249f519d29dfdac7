"""Near-lossless quantisation on real integer kernels: INT8, W8A8 (+SmoothQuant), INT4 (RTN, AWQ).

Math (tensor functions): ``primitives`` (round-to-nearest quantise/dequantise/pack), ``scaling``,
``smoothquant``, ``awq``. Orchestration: ``calibrate`` (layer-wise driver), ``quantize``, ``checkpoint``.
Runtime: ``modules`` (integer linears). Public entry points: ``api``.
"""
