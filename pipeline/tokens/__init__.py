"""Static-ratio token reduction for ViTs: ToMe, PiToMe and OTPrune with size tracking and proportional attention."""
