"""rnet_hub: the RadiologyNET foundation models for timm, transformers and the Hugging Face Hub."""

from ._table import ARCHITECTURES, ArchSpec, find_arch

__version__ = "0.1.0"
__all__ = ["ARCHITECTURES", "ArchSpec", "__version__", "find_arch"]
