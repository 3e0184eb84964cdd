"""Sparse Progressive Distillation (Huang et al., ACL 2022): its parts.

pruning   — gradual magnitude pruning on the cubic schedule, per-matrix masks
grafting  — the grafted model: teacher layers + student modules, Bernoulli replacement per batch
distill   — the layer-wise KD loss (attention MSE + hidden MSE + soft cross-entropy)
method    — SPD composed from those parts, with the paper's defaults and the official code's preset
"""
