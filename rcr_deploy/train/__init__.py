"""Training: losses and the trainer (single process or torchrun + DistributedDataParallel)."""
