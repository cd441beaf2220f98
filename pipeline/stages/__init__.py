"""The stage registry: recipe kind -> Stage."""

from .base import Stage
from .channels import IntraFusion, Prune
from .dtp import DTP
from .export import ExportONNX, ExportTensorRT
from .finetune import Finetune
from .fold_bn import FoldBN
from .tokens import Tokens
from .validate import Validate

STAGES: dict[str, Stage] = {s.kind: s for s in (FoldBN(), Prune(), IntraFusion(), DTP(), Finetune(), Tokens(), ExportONNX(), ExportTensorRT(), Validate())}
