"""Private documents, searchable and answerable offline: readers, chunking, the SQLite index with
hybrid search, and retrieval for answers with their sources."""

from .index import Hit, Index, IndexError_, UpdateSummary, index_path, list_indexes, remove
from .job import Context, Embedder, Source, build, open_embedder, open_for_query, retrieve, search

__all__ = ["Context", "Embedder", "Hit", "Index", "IndexError_", "Source", "UpdateSummary", "build", "index_path",
           "list_indexes", "open_embedder", "open_for_query", "remove", "retrieve", "search"]
