"""Data for the worked examples: handwritten digits (the 8x8 UCI set shipped in the package, or
MNIST IDX files), seeded synthetic sequence tasks (adding problem, copy memory), a character corpus, and
batching of variable-length sequences into padded arrays plus lengths."""
from .digits import load_digits, load_mnist, read_idx
from .synthetic import adding_problem, copy_memory
from .text import (CharVocab, batches, default_corpus, load_text, pad_sequences,
                   read_text_classification_csv)

__all__ = ["load_digits", "load_mnist", "read_idx", "adding_problem", "copy_memory",
           "CharVocab", "batches", "default_corpus", "load_text", "pad_sequences",
           "read_text_classification_csv"]
