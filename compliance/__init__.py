"""govgate compliance package."""
