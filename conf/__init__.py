"""conf/ is installed as the package npnn.conf (pyproject.toml), so that an installed npnn finds its configs."""
