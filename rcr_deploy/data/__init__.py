"""Datasets, augmentation and fake prior masks for training and evaluation."""
