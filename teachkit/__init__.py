"""teachkit: learn pre-training and fine-tuning of language models by doing both."""

__version__ = "0.1.0"
