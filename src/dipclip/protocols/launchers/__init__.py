"""Launchers: ways to execute a protocol's plan elsewhere than in this process. They know runs, not methods."""
