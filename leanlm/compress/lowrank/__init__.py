"""Low-rank and tensor-train compression with int8 factors: SVD, whitened SVD (SVD-LLM), TT embeddings."""
