"""Registries: named entries of one kind (datasets, networks, genotypes, search systems), each registered
once and looked up by name, with one readable line for an unknown name (timm's and detectron2's registries)."""

from __future__ import annotations

from typing import Generic, TypeVar

from utils.errors import UserError

Entry = TypeVar("Entry")


class Registry(dict[str, Entry], Generic[Entry]):
    """A ``dict`` of name -> entry that refuses a second entry under one name."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str, entry: Entry) -> Entry:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def lookup(self, name: str, origin: str) -> Entry:
        """The entry named ``name``; an unknown name is a UserError starting with ``origin`` (a flag or a file)."""
        if name not in self:
            raise UserError(f"{origin}: unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]
