"""Static-ratio token reduction for ViTs: ToMe, PiToMe and OTPrune (merge.py) with size tracking and
proportional attention, patched into a model's blocks (patch.py) through one adapter per family
(adapters/)."""
