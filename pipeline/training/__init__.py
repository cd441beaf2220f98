"""Training for the stages that train (dtp, finetune): in-memory data with seeded per-sample augmentation
(loop.py), SGD with momentum and a cosine schedule, bf16 autocast on GPU, DDP under torchrun
(distributed.py), one checkpoint file per stage written every epoch (checkpoints.py), and fine-tuning with
its recipe keys defined once (finetune.py)."""
