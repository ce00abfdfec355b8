"""The engine: the only part of cvtui that talks to hosts."""
