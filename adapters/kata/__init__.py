"""The Kata Containers runtime adapter, through containerd (see :mod:`adapters.kata.adapter`)."""

from adapters.kata.adapter import KataAdapter, KataConfig

__all__ = ["KataAdapter", "KataConfig"]
