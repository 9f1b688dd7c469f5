"""A LLaMA-style language model built from first principles in PyTorch."""
