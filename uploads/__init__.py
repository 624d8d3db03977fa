"""Upload files: the file kinds, their writers and readers, and the prediction records."""
