"""CNN channel machinery: BN folding (fold_bn), channel groups (groups), importance criteria (importance),
how much each group keeps (allocation), the FLOPs model (flops), optimal-transport fusion (fusion) and the
shrink that applies a keep strategy to every group (shrink)."""
