"""pytest fixtures for the s3 part of the test ground."""
