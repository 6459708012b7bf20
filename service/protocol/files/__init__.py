"""The packaged protocol and value-set files (TOML), read with importlib.resources."""
