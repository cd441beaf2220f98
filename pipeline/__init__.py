"""otcompress: compress a trained PyTorch model by a recipe (or in Python), export it, and validate it.

    otcompress.compress(model, input_shape, stages=[...], data=..., out=...)  -> (compressed module, report)
    otcompress.load("artifacts/x/compressed.safetensors")                       -> the compressed module
"""

from .version import __version__  # noqa: F401


def load(path, model=None):
    """Rebuild a compressed model from compressed.safetensors (no recipe needed).

    Args:
        path: the compressed.safetensors a run wrote.
        model: a freshly built model of the original architecture; needed only where the run recorded no model
            source (`otcompress.compress()` without `source=`), else the source builds it.

    Raises:
        OTCError: the file is not one otcompress wrote, or the recorded model cannot be built.
    """
    from .serialize import load_compressed

    return load_compressed(path, model)[0]


def compress(model, input_shape, stages, data=None, out=None, **kw):
    """See otcompress.run.compress (the same plan check, stages, artifacts and gate as `otcompress run`)."""
    from .run import compress as _compress

    return _compress(model, input_shape, stages, data, out, **kw)
