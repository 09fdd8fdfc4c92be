"""A one-file-settings Django project: a /health view that touches the database, as real ones do."""
