"""govgate adapters package."""
