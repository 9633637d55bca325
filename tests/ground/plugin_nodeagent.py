"""pytest fixtures for the nodeagent part of the test ground."""
