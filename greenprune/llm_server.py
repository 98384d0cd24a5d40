"""`python -m greenprune.llm_server`, the documented entry point of the search's local chat server
(greenprune.search.llm_server)."""
from .search.llm_server import ChatServer, main, serve

__all__ = ["ChatServer", "main", "serve"]

if __name__ == "__main__":
    raise SystemExit(main())
