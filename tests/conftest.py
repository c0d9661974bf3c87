"""Suite-wide settings."""

import torch

# One intra-op thread: the tensors here are small, and on a busy machine torch with 2 threads was measured
# 10-100x slower than with 1 (benchmarks/RESULTS.md); fedsim's own default is threads = 1 for the same reason.
torch.set_num_threads(1)
