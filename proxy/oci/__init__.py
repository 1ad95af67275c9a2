"""Pure OCI knowledge: digests, names and references, media types, manifests. No I/O here."""
