"""The build engine: workspace, BUILD dialect, analysis, actions, cache, doit bridge."""
