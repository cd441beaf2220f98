"""Differentiable Transportation Pruning (Li et al., ICCV 2023): entropic-OT soft channel masks trained
with the weights, exact keep counts, then hard masks and fine-tuning."""
