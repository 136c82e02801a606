"""Example request handlers served by the bundled config etc/sockherd.toml."""
