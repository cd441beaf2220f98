"""The stage registry: recipe kind -> Stage. A plugin adds a stage with STAGES.register(kind, instance)."""

from ..registry import Registry
from .base import Stage

STAGES = Registry("stage kind")

from .channels import IntraFusion, Prune  # noqa: E402
from .dtp import DTP  # noqa: E402
from .export import ExportONNX, ExportTensorRT  # noqa: E402
from .finetune import Finetune  # noqa: E402
from .fold_bn import FoldBN  # noqa: E402
from .quantize import Quantize  # noqa: E402
from .repair import Repair  # noqa: E402
from .tokens import Tokens  # noqa: E402
from .validate import Validate  # noqa: E402

for _s in (FoldBN(), Prune(), IntraFusion(), DTP(), Finetune(), Repair(), Tokens(), ExportONNX(), Quantize(),
           ExportTensorRT(), Validate()):
    STAGES.register(_s.kind, _s)

__all__ = ["STAGES", "Stage"]
