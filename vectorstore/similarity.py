"""Similarity search computed inside Redis (vector sets). Placeholder mixin."""
from __future__ import annotations


class SimilarityMixin:
    """gensim's similarity API for RedisKeyedVectors."""
