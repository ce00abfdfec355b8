"""Tests of cvtui.catalog."""
