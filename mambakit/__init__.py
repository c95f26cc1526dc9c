"""mambakit: Mamba, Mamba-2 and hybrid SSM language models in PyTorch (CPU and GPU)."""
from .cache import InferenceCache
from .config import ModelConfig
from .convert import CheckpointError, load
from .generation import generate, stream
from .model import LM
from .patterns import allocate_pattern
from .presets import PRESETS

__version__ = "0.1.0"

__all__ = ["ModelConfig", "LM", "InferenceCache", "load", "generate", "stream", "PRESETS", "CheckpointError",
           "allocate_pattern"]
