"""The leakage lab's view of the maskable-dropout models, which live in fedsim's model registry
(``fedsim/models/masked.py``): ``MaskedDropout`` sites whose masks can be recorded, replayed or optimised."""

from fedsim.models.masked import DropoutMLP, MaskedDropout, activation_shapes, dropout_sites, set_masks

__all__ = ["DropoutMLP", "MaskedDropout", "activation_shapes", "dropout_sites", "set_masks"]
