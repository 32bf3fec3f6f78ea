"""ddro: Direct Document Relevance Optimization for generative retrieval."""

__version__ = "0.1.0"
