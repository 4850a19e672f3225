"""Objects: content-addressed bytes (array data, app bundles), stored once, moved in chunks."""
