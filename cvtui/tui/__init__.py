"""The Textual dashboard: reads the catalog, never opens SSH itself."""
