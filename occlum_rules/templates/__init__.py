"""jinja2 templates for the generated Occlum configuration files."""
