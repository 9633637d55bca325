"""pytest fixtures for the controlplane part of the test ground."""
