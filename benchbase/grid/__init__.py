"""Grid spec (command line or TOML) → validated cells with stable identities."""
