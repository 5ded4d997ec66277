"""The embedded `local` model: real lexicon, rules and embeddings, no network, no keys."""
