"""matplotlib for the commands that draw (sweep, bench): an optional dependency, asked for by name."""

from __future__ import annotations

from ..errors import OTCError


def pyplot(command: str):
    """matplotlib.pyplot with the Agg backend. Raises OTCError naming the extra to install where it is missing."""
    try:
        import matplotlib
    except ImportError:
        raise OTCError(f"{command} draws its plot with matplotlib, which is not installed: "
                       "pip install 'otcompress[plots]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
