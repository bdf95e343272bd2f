"""Adapters between the engine's StageContext and the pure stages.

Each function here is what an action's ``func`` names: it reads the context (inputs,
outputs, parameters), calls a stage's pure API and writes the declared outputs. Keeping
them apart from the stages keeps the stages free of build-engine concepts.
"""
