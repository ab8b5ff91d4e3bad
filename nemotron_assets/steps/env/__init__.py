"""nemo-run environment profiles: env/env_toml."""
