"""Stand-in LibOS sources, used when no Occlum install is found."""
