"""Test helpers: real servers (nginx) and throw-away workspaces."""
