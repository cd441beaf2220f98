"""otcompress: compress a trained PyTorch model by a recipe, export it, and validate it."""

__version__ = "0.1.0"


def load(path):
    """Rebuild a compressed model from compressed.safetensors (no recipe needed)."""
    from .serialize import load_compressed

    return load_compressed(path)[0]
